"""The search space (SPEC B4) and its one translation: a loss is searched as a raw vector in
[0, 1]^D, one coordinate per control-point coordinate, and becomes the surrogate's monotone
control points theta through surrogates.curves.raw_to_control (A§3.2). With search.ce_mix
"searched", one more coordinate at the end is the cross-entropy weight l of
(1 - l) * surrogate + l * CE. A trial's config carries the raw vector under the keys
raw_0 ... raw_{D-1} (the Tuner's param_space).

`metric` is one of the paper's six by name, or a MetricSpec (search.config.target): a spec's
curves are those its formula reads (surrogates.spec_curves: h_TP, h_FP), SPEC_PIECES pieces
each."""

from surrogates.curves import DEFAULT_PIECES, METRIC_CURVES, identity_raw, raw_to_control
from surrogates.spec import SPEC_PIECES, MetricSpec, spec_curves

CE_MIX_START = 0.25  # a searched weight starts at the CE:surrogate mix of 0.25:0.75


def curve_count(metric: "str | MetricSpec") -> int:
    """The searched curves of the metric's surrogate."""
    if isinstance(metric, MetricSpec):
        return len(spec_curves(metric))
    return METRIC_CURVES[metric]


def initial_raw(metric: "str | MetricSpec", ce_mix: str = "off") -> list[float]:
    """The identity curve in raw coordinates, once per curve of the metric (A§3.5), and the
    starting CE weight when it is searched."""
    pieces = SPEC_PIECES if isinstance(metric, MetricSpec) else DEFAULT_PIECES[metric]
    curves = identity_raw(pieces) * curve_count(metric)
    return curves + [CE_MIX_START] if ce_mix == "searched" else curves


def curve_dims(metric: "str | MetricSpec") -> int:
    return len(initial_raw(metric))


def to_theta(metric: "str | MetricSpec", raw: list[float]) -> list[float]:
    """Raw values -> the control points a SurrogateLoss for `metric` takes."""
    return raw_to_control(raw[: curve_dims(metric)], curve_count(metric))


def ce_weight(ce_mix: str, metric: "str | MetricSpec", raw: list[float]) -> float:
    """The CE weight of a raw vector: 0 when search.ce_mix is off, its value when it is a
    number, the last coordinate when it is searched."""
    if ce_mix == "off":
        return 0.0
    if ce_mix == "searched":
        return float(raw[curve_dims(metric)])
    return float(ce_mix)


def raw_keys(num_dims: int) -> list[str]:
    return [f"raw_{d}" for d in range(num_dims)]


def raw_of(config: dict) -> list[float]:
    """The raw vector of a trial config (its raw_0 ... raw_{D-1} entries)."""
    return [config[key] for key in raw_keys(sum(key.startswith("raw_") for key in config))]
