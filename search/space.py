"""The search space (SPEC B4) and its one translation: a loss is searched as a raw vector in
[0, 1]^D, one coordinate per control-point coordinate, and becomes the surrogate's monotone
control points theta through surrogates.curves.raw_to_control (A§3.2). With search.ce_mix
"searched", one more coordinate at the end is the cross-entropy weight l of
(1 - l) * surrogate + l * CE. A trial's config carries the raw vector under the keys
raw_0 ... raw_{D-1} (the Tuner's param_space)."""

from surrogates.curves import DEFAULT_PIECES, METRIC_CURVES, identity_raw, raw_to_control

CE_MIX_START = 0.25  # a searched weight starts at the CE:surrogate mix of 0.25:0.75


def initial_raw(metric: str, ce_mix: str = "off") -> list[float]:
    """The identity curve in raw coordinates, once per curve of the metric (A§3.5), and the
    starting CE weight when it is searched."""
    curves = identity_raw(DEFAULT_PIECES[metric]) * METRIC_CURVES[metric]
    return curves + [CE_MIX_START] if ce_mix == "searched" else curves


def curve_dims(metric: str) -> int:
    return len(initial_raw(metric))


def to_theta(metric: str, raw: list[float]) -> list[float]:
    """Raw values -> the control points a SurrogateLoss for `metric` takes."""
    return raw_to_control(raw[: curve_dims(metric)], METRIC_CURVES[metric])


def ce_weight(ce_mix: str, metric: str, raw: list[float]) -> float:
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
