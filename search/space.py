"""The search space (SPEC B4) and its one translation: a loss is searched as a raw vector in
[0, 1]^D, one coordinate per control-point coordinate, and becomes the surrogate's monotone
control points theta through surrogates.curves.raw_to_control (A§3.2). A trial's config carries
the raw vector under the keys raw_0 ... raw_{D-1} (the Tuner's param_space)."""

from surrogates.curves import DEFAULT_PIECES, METRIC_CURVES, identity_raw, raw_to_control


def initial_raw(metric: str) -> list[float]:
    """The identity curve in raw coordinates, once per curve of the metric (A§3.5)."""
    return identity_raw(DEFAULT_PIECES[metric]) * METRIC_CURVES[metric]


def dims(metric: str) -> int:
    return len(initial_raw(metric))


def to_theta(metric: str, raw: list[float]) -> list[float]:
    """Raw values -> the control points a SurrogateLoss for `metric` takes."""
    return raw_to_control(raw, METRIC_CURVES[metric])


def raw_keys(num_dims: int) -> list[str]:
    return [f"raw_{d}" for d in range(num_dims)]


def raw_of(config: dict) -> list[float]:
    """The raw vector of a trial config (its raw_0 ... raw_{D-1} entries)."""
    return [config[key] for key in raw_keys(sum(key.startswith("raw_") for key in config))]
