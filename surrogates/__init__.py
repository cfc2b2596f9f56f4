"""Exact segmentation metrics, Bezier curves, metric surrogates and baseline losses, and metric
specs (a metric as a formula over per-class counts). Torch only."""

from surrogates.curves import (
    PRESETS,
    control_to_raw,
    evaluate_curve,
    identity_control,
    identity_raw,
    list_presets,
    raw_to_control,
)
from surrogates.losses import build_loss, list_losses
from surrogates.metrics import METRIC_COLUMNS, SegMetrics, SpecMetric
from surrogates.spec import (
    SPEC_PIECES,
    MetricSpec,
    list_specs,
    load_spec,
    spec_curves,
    spec_from_dict,
)
from surrogates.surrogate import METRICS, SurrogateLoss

__all__ = [
    "METRICS",
    "METRIC_COLUMNS",
    "PRESETS",
    "SPEC_PIECES",
    "MetricSpec",
    "SegMetrics",
    "SpecMetric",
    "SurrogateLoss",
    "build_loss",
    "control_to_raw",
    "evaluate_curve",
    "identity_control",
    "identity_raw",
    "list_losses",
    "list_presets",
    "list_specs",
    "load_spec",
    "raw_to_control",
    "spec_curves",
    "spec_from_dict",
]
