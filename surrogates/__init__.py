"""Exact segmentation metrics, Bezier curves, metric surrogates and baseline losses. Torch only."""

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
from surrogates.metrics import METRIC_COLUMNS, SegMetrics
from surrogates.surrogate import METRICS, SurrogateLoss

__all__ = [
    "METRICS",
    "METRIC_COLUMNS",
    "PRESETS",
    "SegMetrics",
    "SurrogateLoss",
    "build_loss",
    "control_to_raw",
    "evaluate_curve",
    "identity_control",
    "identity_raw",
    "list_losses",
    "list_presets",
    "raw_to_control",
]
