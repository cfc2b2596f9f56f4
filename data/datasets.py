"""Datasets by name: `build_dataset(name, root, split, transform)` for shapes, voc, cityscapes,
and `resolve_dataset("auto", root)`: VOC if present under root, else Cityscapes, else the built-in
shapes (DESIGN.md). The readers are imported by their builder, only when used."""

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from surrogates.checks import unknown_name

DEFAULT_ROOT = Path(__file__).resolve().parent  # dataset files live in data/ (git-ignored)

_DATASETS: dict[str, Callable[..., Dataset]] = {}  # name -> builder(root, split, transform, **kw)


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
def shapes(root: Path, split: str, transform: Callable | None = None, **params) -> Dataset:
    from data.shapes import Shapes

    return Shapes(root, split, transform, **params)


@register_dataset
def voc(root: Path, split: str, transform: Callable | None = None, aug: bool | None = None):
    from data.voc import VOCSegmentation

    return VOCSegmentation(root, split, transform, aug=aug)


@register_dataset
def cityscapes(root: Path, split: str, transform: Callable | None = None) -> Dataset:
    from data.cityscapes import Cityscapes

    return Cityscapes(root / "cityscapes", split, transform)


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
