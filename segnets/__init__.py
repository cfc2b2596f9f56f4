"""Segmentation networks by name: `build_segnet(name, num_classes, **kwargs)`, `list_segnets()`."""

from segnets.models import build_segnet, list_segnets, register_segnet

__all__ = ["build_segnet", "list_segnets", "register_segnet"]
