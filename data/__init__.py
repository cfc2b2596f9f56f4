"""Datasets and loaders.

Every dataset item is (image, target): after the transforms a float (3, H, W) image and an int64
(H, W) label map with 255 = void. Datasets expose num_classes, ignore_index and class_names.

Importing any part of `data` first runs the torchvision compatibility import (DESIGN.md), so the
modules here import torchvision plainly.
"""

import data.torchvision_compat  # noqa: F401

# isort: split
from data.datasets import (
    DEFAULT_ROOT,
    build_dataset,
    list_datasets,
    register_dataset,
    resolve_dataset,
)
from data.loaders import eval_loader, train_loader

__all__ = [
    "DEFAULT_ROOT",
    "build_dataset",
    "eval_loader",
    "list_datasets",
    "register_dataset",
    "resolve_dataset",
    "train_loader",
]
