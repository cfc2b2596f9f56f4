"""Datasets by name: `build_dataset(name, root, split, transform)` for shapes, voc, cityscapes,
folder (a user's own), ade20k, camvid, cocostuff, and `resolve_dataset("auto", root)`: VOC if
present under root, else Cityscapes, else the built-in shapes (DESIGN.md). The readers are
imported by their builder, only when used.

Every dataset has a `holdout` split for the search's reward (SPEC B4): shapes draws it from its own
random stream; the others hold out a fraction of their train list (`holdout_fraction`, the key
data.params.holdout_fraction, `_carve_holdout`), and `without_holdout=True` gives the train split
without those images (what the proxy trains on)."""

import importlib
import math
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from surrogates.checks import unknown_name

DEFAULT_ROOT = Path(__file__).resolve().parent  # dataset files live in data/ (git-ignored)

_DATASETS: dict[str, Callable[..., Dataset]] = {}  # name -> builder(root, split, transform, **kw)
# voc, cityscapes: the share of the train list held out for the reward; 0.1 is images 0, 10,
# 20, ... (docs/data.md: the reward's seed spread at two fractions, bench/holdout.py)
HOLDOUT_FRACTION = 0.1


def register_dataset(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
    if fn.__name__ in _DATASETS:
        raise ValueError(f"a dataset is already registered under the name '{fn.__name__}'")
    _DATASETS[fn.__name__] = fn
    return fn


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(
    name: str, root: str | Path, split: str, transform: Callable | None = None, **kwargs
) -> Dataset:
    if name not in _DATASETS:
        raise unknown_name("dataset", name, list_datasets())
    return _DATASETS[name](Path(root), split, transform, **kwargs)


@register_dataset
def shapes(
    root: Path,
    split: str,
    transform: Callable | None = None,
    without_holdout: bool = False,
    **params,
) -> Dataset:
    from data.shapes import Shapes

    return Shapes(root, split, transform, **params)  # its train never holds holdout images


@register_dataset
def voc(
    root: Path,
    split: str,
    transform=None,
    aug: bool | None = None,
    without_holdout: bool = False,
    holdout_fraction: float = HOLDOUT_FRACTION,
) -> Dataset:
    from data.voc import VOCSegmentation

    def read(root: Path, split: str, transform) -> Dataset:
        return VOCSegmentation(root, split, transform, aug=aug)

    return _carve_holdout(read, root, split, transform, without_holdout, holdout_fraction)


@register_dataset
def cityscapes(
    root: Path,
    split: str,
    transform=None,
    without_holdout: bool = False,
    holdout_fraction: float = HOLDOUT_FRACTION,
) -> Dataset:
    from data.cityscapes import Cityscapes

    def read(root: Path, split: str, transform) -> Dataset:
        return Cityscapes(root / "cityscapes", split, transform)

    return _carve_holdout(read, root, split, transform, without_holdout, holdout_fraction)


def _file_dataset(name: str) -> None:
    """Register `name`, read by data/<name>.py's read_<name>(root, split, transform), with the
    holdout carved from train."""

    def build(
        root: Path,
        split: str,
        transform=None,
        without_holdout: bool = False,
        holdout_fraction: float = HOLDOUT_FRACTION,
    ) -> Dataset:
        read = getattr(importlib.import_module(f"data.{name}"), f"read_{name}")
        return _carve_holdout(read, root, split, transform, without_holdout, holdout_fraction)

    build.__name__ = name
    register_dataset(build)


# The folder datasets: a user's own (`folder`, root: the folder or its dataset.yaml) and the
# field's named ones, each a fixed layout and mask coding over the same reader (data/folder.py).
for _name in ("folder", "ade20k", "camvid", "cocostuff"):
    _file_dataset(_name)


def _carve_holdout(
    read: Callable[..., Dataset],
    root: Path,
    split: str,
    transform,
    without_holdout: bool,
    fraction: float,
) -> Dataset:
    """`read(root, split, transform)`, with the search's holdout carved from train: split
    "holdout" is that share of train, `without_holdout` gives train less it; val is never
    touched."""
    check_holdout_fraction(fraction)
    if split == "holdout":
        return _hold_out(read(root, "train", transform), "holdout", fraction)
    dataset = read(root, split, transform)
    if without_holdout and split == "train":
        return _hold_out(dataset, "rest", fraction)
    return dataset


def check_holdout_fraction(value) -> None:
    """A number strictly between 0 and 1: 0 would leave the reward no image, 1 the proxy none
    of those it may hold out."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and 0 < value < 1):
        raise ValueError(
            f"data.params.holdout_fraction must be a number in (0, 1), got {value!r} "
            f"(default {HOLDOUT_FRACTION})"
        )


def held_out_positions(count: int, fraction: float) -> list[int]:
    """Positions round(k / fraction), k = 0, 1, ..., below `count`: a `fraction` of the
    positions, spread evenly from the first; 0.1 gives 0, 10, 20, ..."""
    positions = []
    while (position := round(len(positions) / fraction)) < count:
        positions.append(position)
    return positions


def _hold_out(dataset: Dataset, part: str, fraction: float) -> Dataset:
    """Keep the held-out images of a train split (part="holdout") or the others ("rest"): a
    `fraction` of those whose labels are in the evaluation's style, evenly spread (VOC: VOC's
    own labels with their void bands, not SBD's; `voc_labelled`), so that the reward's
    boundary metrics are measured on the same kind of labels as val."""
    style = getattr(dataset, "voc_labelled", [True] * len(dataset.images))
    candidates = [i for i, ok in enumerate(style) if ok]
    held = {candidates[p] for p in held_out_positions(len(candidates), fraction)}
    keep = [i for i in range(len(dataset.images)) if (i in held) == (part == "holdout")]
    if not keep:
        raise ValueError(
            f"the train split has {len(dataset.images)} image(s): too few to hold out "
            f"{fraction:g} of them for the search's reward (use search.reward_split=val)"
        )
    for name in ("ids", "images", "labels", "voc_labelled"):  # the lists the readers index
        if hasattr(dataset, name):
            setattr(dataset, name, [getattr(dataset, name)[i] for i in keep])
    return dataset


def resolve_dataset(name: str, root: str | Path) -> str:
    """`auto` -> the first dataset found under root: voc, cityscapes, else shapes."""
    if name != "auto":
        return name
    root = Path(root)
    if (root / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir():
        return "voc"
    if (root / "cityscapes" / "leftImg8bit").is_dir():
        return "cityscapes"
    return "shapes"
