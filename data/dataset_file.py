"""dataset.yaml: the one small file that describes a folder dataset (data/folder.py), read and
checked. Every key is optional; docs/data.md ("Your own data") has a complete example.

    root               the dataset's folder, relative to the file (default: the file's folder)
    classes            names, or {name:, colour: [r, g, b]} mappings (rgb masks)
    num_classes        when there are no names (names default to class_0, class_1, ...)
    void               the raw value that is void (index masks; default 255, null: none)
    reduce_zero_label  raw 0 is void and k is class k - 1 (ADE20K's convention)
    class_map          {raw value: class id or 255}; a raw value it does not name is invalid
    mask_encoding      index (default), rgb (default when every class has a colour), binary
    void_colours       rgb masks: colours that are void
    images, masks      path templates under the root, "{split}" for the split's name
    image_suffix, mask_suffix   the file endings to pair (mask_suffix: _labelTrainIds.png)
    splits             {split: list file of stems} for one folder of images
    split_ratio        val's share of the stems when there is no val (default 0.2) ...
    split_seed         ... chosen by a shuffle with this seed (default 0)

Every problem is a ValueError whose first line names the file and the key (an unknown key with
a did-you-mean); the commands print it as one line and exit 2.
"""

from dataclasses import dataclass
from pathlib import Path
from string import Formatter

import yaml

from data.masks import ENCODINGS, VOID
from surrogates.checks import unknown_name

SPLITS = ("train", "val", "test")
DATASET_FILE = "dataset.yaml"
SPEC_KEYS = (
    "root", "classes", "num_classes", "void", "reduce_zero_label", "class_map", "mask_encoding",
    "void_colours", "images", "masks", "image_suffix", "mask_suffix", "splits", "split_ratio",
    "split_seed",
)  # fmt: skip


@dataclass(frozen=True)
class FolderSpec:
    """A dataset.yaml, checked; None where the file does not say (inferred from the tree)."""

    file: Path | None = None
    root: Path | None = None  # the dataset folder when the file lives elsewhere
    class_names: tuple[str, ...] = ()
    colours: tuple[tuple[int, int, int], ...] = ()  # one per class, or none
    num_classes: int | None = None
    void: int | None = VOID
    void_given: bool = False  # `void:` was written (binary masks are not inferred then)
    reduce_zero_label: bool = False
    class_map: tuple[tuple[int, int], ...] = ()
    mask_encoding: str | None = None
    void_colours: tuple[tuple[int, int, int], ...] = ()
    images: str | None = None  # path templates under the root, "{split}" for the split
    masks: str | None = None
    image_suffix: str | None = None
    mask_suffix: str | None = None
    splits: tuple[tuple[str, str], ...] = ()  # (split, list file under the root)
    split_ratio: float | None = None
    split_seed: int = 0


def read_spec(path: Path) -> FolderSpec:
    """dataset.yaml as a FolderSpec; every problem is a ValueError whose first line names the
    file and the key."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of keys ({', '.join(SPEC_KEYS)})")
    for key in doc:
        if key not in SPEC_KEYS:
            raise ValueError(f"{path}: {unknown_name('key', key, SPEC_KEYS)}")
    fields = {"file": path}
    for key, value in doc.items():
        fields.update(_read_key(path, key, value))
    if "void" in doc:
        fields["void_given"] = True
    spec = FolderSpec(**fields)
    _check_together(spec, set(doc))
    return spec


def _read_key(path: Path, key: str, value) -> dict:
    """The FolderSpec fields of one key, type-checked."""
    if key == "classes":
        return _read_classes(path, value)
    if key == "num_classes":
        return {key: _int(path, key, value, low=1)}
    if key == "void":
        return {key: None if value is None else _int(path, key, value, 0, 255, "or null")}
    if key == "reduce_zero_label":
        if not isinstance(value, bool):
            raise _bad(path, key, "true or false", value)
        return {key: value}
    if key == "class_map":
        if not isinstance(value, dict) or not value:
            raise _bad(path, key, "a mapping of raw value: class id (or 255)", value)
        pairs = [(_int(path, key, raw, 0), _int(path, key, cls, 0)) for raw, cls in value.items()]
        return {key: tuple(sorted(pairs))}
    if key == "mask_encoding":
        if value not in ENCODINGS:
            raise ValueError(f"{path}: mask_encoding: {unknown_name('encoding', value, ENCODINGS)}")
        return {key: value}
    if key == "void_colours":
        if not isinstance(value, list) or not value:
            raise _bad(path, key, "a list of [r, g, b] colours", value)
        return {key: tuple(_colour(path, key, c) for c in value)}
    if key in ("root", "images", "masks", "image_suffix", "mask_suffix"):
        if not isinstance(value, str) or not value:
            raise _bad(path, key, "a non-empty string", value)
        if key in ("images", "masks"):
            _check_template(path, key, value)
        return {key: (path.parent / value).resolve() if key == "root" else value}
    if key == "splits":
        return {key: _read_splits(path, value)}
    if key == "split_ratio":
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and 0 < value < 1):
            raise _bad(path, key, "a number in (0, 1)", value)
        return {key: float(value)}
    assert key == "split_seed", key
    return {key: _int(path, key, value)}


def _read_classes(path: Path, value) -> dict:
    """`classes: [road, car]` or `classes: [{name: road, colour: [128, 64, 128]}, ...]`."""
    if not isinstance(value, list) or not value:
        raise _bad(path, "classes", "a list of names or of {name:, colour:} mappings", value)
    names, colours = [], []
    for item in value:
        if isinstance(item, str | int) and not isinstance(item, bool):
            names.append(str(item))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("name"), str | int):
            raise _bad(path, "classes", "names or {name:, colour:} mappings", item)
        for key in item:
            if key not in ("name", "colour", "color"):
                raise ValueError(
                    f"{path}: classes: {unknown_name('class key', key, ['name', 'colour'])}"
                )
        names.append(str(item["name"]))
        colour = item.get("colour", item.get("color"))
        if colour is not None:
            colours.append(_colour(path, "classes", colour))
    if colours and len(colours) != len(names):
        raise ValueError(
            f"{path}: classes: {len(colours)} of {len(names)} classes have a colour; give one "
            "to every class or to none"
        )
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{path}: classes: the name '{twice}' is given twice")
    return {"class_names": tuple(names), "colours": tuple(colours)}


def _read_splits(path: Path, value) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        raise _bad(path, "splits", "a mapping of split: list file (train: train.txt)", value)
    for split, list_file in value.items():
        if split not in SPLITS:
            raise ValueError(f"{path}: splits: {unknown_name('split', split, SPLITS)}")
        if not isinstance(list_file, str) or not list_file:
            raise _bad(path, f"splits.{split}", "a list file's path", list_file)
    return tuple(value.items())


def _check_together(spec: FolderSpec, keys: set[str]) -> None:
    """Keys that are each well typed but do not fit together."""
    path, names = spec.file, spec.class_names
    if names and spec.num_classes is not None and spec.num_classes != len(names):
        raise ValueError(
            f"{path}: num_classes: {spec.num_classes}, but classes names {len(names)} classes"
        )
    encoding = spec.mask_encoding or ("rgb" if spec.colours else "index")
    if encoding == "rgb" and not spec.colours:
        raise ValueError(
            f"{path}: mask_encoding: rgb needs a colour for every class "
            "(classes: [{name: road, colour: [128, 64, 128]}, ...])"
        )
    if encoding != "rgb" and "void_colours" in keys:
        raise ValueError(f"{path}: void_colours: applies to mask_encoding: rgb only")
    for key in ("void", "reduce_zero_label", "class_map"):
        if key in keys and encoding != "index":
            raise ValueError(f"{path}: {key}: applies to index masks, not {encoding}")
    classes = len(names) or spec.num_classes
    if encoding == "binary" and classes not in (None, 2):
        raise ValueError(f"{path}: mask_encoding: binary masks have 2 classes, not {classes}")
    for raw, class_id in spec.class_map:
        if class_id != VOID and classes is not None and class_id >= classes:
            raise ValueError(
                f"{path}: class_map: raw {raw} -> {class_id}, but there are {classes} classes "
                f"(ids 0..{classes - 1}, or {VOID} for void)"
            )
    if (spec.images is None) != (spec.masks is None):
        key = "masks" if spec.images else "images"
        raise ValueError(f"{path}: {key}: images and masks go together: give both")
    if spec.splits and spec.split_ratio is not None:
        raise ValueError(f"{path}: split_ratio: give splits (lists) or split_ratio, not both")


def _int(path: Path, key: str, value, low: int | None = None, high=None, extra: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(path, key, f"an integer {extra}".strip(), value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise _bad(path, key, f"an integer {bounds} {extra}".strip(), value)
    return value


def _colour(path: Path, key: str, value) -> tuple[int, int, int]:
    ok = isinstance(value, list | tuple) and len(value) == 3
    if not ok or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise _bad(path, key, "colours as [r, g, b] with each in 0..255", value)
    if not all(0 <= c <= 255 for c in value):
        raise _bad(path, key, "colours as [r, g, b] with each in 0..255", value)
    return tuple(value)


def _check_template(path: Path, key: str, template: str) -> None:
    try:
        fields = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError:  # an unmatched brace
        raise _bad(path, key, "a path with {split} or none", template) from None
    other = sorted(fields - {"split"})
    if other:
        raise ValueError(f"{path}: {key}: '{template}' may hold {{split}} only, not {{{other[0]}}}")


def _bad(path: Path, key: str, expected: str, value) -> ValueError:
    return ValueError(f"{path}: {key} must be {expected}, got {value!r}")
