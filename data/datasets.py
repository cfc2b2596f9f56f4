"""Datasets by name: `build_dataset(name, root, split, transform)` for shapes, voc, cityscapes,
and `resolve_dataset("auto", root)`: VOC if present under root, else Cityscapes, else the built-in
shapes (DESIGN.md). The readers are imported by their builder, only when used.

Every dataset has a `holdout` split for the search's reward (SPEC B4): shapes draws it from its own
random stream; voc and cityscapes hold out every HOLDOUT_EVERY-th image of their train list, and
`without_holdout=True` gives the train split without those images (what the proxy trains on)."""

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from surrogates.checks import unknown_name

DEFAULT_ROOT = Path(__file__).resolve().parent  # dataset files live in data/ (git-ignored)

_DATASETS: dict[str, Callable[..., Dataset]] = {}  # name -> builder(root, split, transform, **kw)
HOLDOUT_EVERY = 10  # voc, cityscapes: images 0, 10, 20, ... of the sorted train list


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
    root: Path, split: str, transform=None, aug: bool | None = None, without_holdout: bool = False
) -> Dataset:
    from data.voc import VOCSegmentation

    if split == "holdout":
        return _hold_out(VOCSegmentation(root, "train", transform, aug=aug), "holdout")
    dataset = VOCSegmentation(root, split, transform, aug=aug)
    return _hold_out(dataset, "rest") if without_holdout and split == "train" else dataset


@register_dataset
def cityscapes(root: Path, split: str, transform=None, without_holdout: bool = False) -> Dataset:
    from data.cityscapes import Cityscapes

    if split == "holdout":
        return _hold_out(Cityscapes(root / "cityscapes", "train", transform), "holdout")
    dataset = Cityscapes(root / "cityscapes", split, transform)
    return _hold_out(dataset, "rest") if without_holdout and split == "train" else dataset


def _hold_out(dataset: Dataset, part: str) -> Dataset:
    """Keep the held-out images of a train split (part="holdout") or the others ("rest"):
    every HOLDOUT_EVERY-th image among those whose labels are in the evaluation's style (VOC:
    VOC's own labels with their void bands, not SBD's; `voc_labelled`), so that the reward's
    boundary metrics are measured on the same kind of labels as val."""
    style = getattr(dataset, "voc_labelled", [True] * len(dataset.images))
    candidates = [i for i, ok in enumerate(style) if ok]
    held = set(candidates[::HOLDOUT_EVERY])
    keep = [i for i in range(len(dataset.images)) if (i in held) == (part == "holdout")]
    if not keep:
        raise ValueError(
            f"the train split has {len(dataset.images)} image(s): too few to hold out every "
            f"{HOLDOUT_EVERY}th for the search's reward (use search.reward_split=val)"
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
