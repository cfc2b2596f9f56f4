"""Datasets read from folders of images and masks: a user's own data (`data=folder`), and the
reader that the field's named datasets (data/ade20k.py, camvid.py, cocostuff.py) share.

Images and masks sit in two parallel trees and pair by stem (the path under the folder, less the
suffix: `images/train/a/x.jpg` pairs with `masks/train/a/x.png`). The layouts found under the
dataset's folder, in this order:

    split folders   <root>/images/<split>/x.jpg + <root>/masks/<split>/x.png   (MMSegmentation,
                    Detectron2)
    split first     <root>/<split>/images/x.jpg + <root>/<split>/masks/x.png   (CamVid guides)
    one folder      <root>/images/x.jpg + <root>/masks/x.png, the splits from lists of stems
                    (`splits:`) or a seeded share of the stems as val (`split_ratio:`)

where `images` is any of IMAGE_FOLDERS and `masks` any of MASK_FOLDERS. An optional
`<root>/dataset.yaml` (or the file `data=path/to/dataset.yaml` names) describes the classes, the
mask coding (data/masks.py), the paths and the splits (data/dataset_file.py; docs/data.md,
"Your own data"). What it leaves out is inferred from the tree and printed in one line, never
guessed silently: the layout, val as a seeded 20 % of train when there is no val folder, and the
number of classes from the largest mask value in a sample of the masks (masks of only 0 and 255
read as binary).

Splits: train, val and, where the tree has one, test; the search's holdout is carved from train
by data/datasets.py, never from val. Images without a mask and masks without an image are left
out and listed in the dataset's `unmatched` (./launch.sh check-data reports them).
"""

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from data.torchvision_compat import torchvision  # noqa: F401  (loads torchvision on a CPU torch)

# isort: split
from torchvision import tv_tensors

from data.dataset_file import DATASET_FILE, SPLITS, FolderSpec, read_spec
from data.masks import INVALID, VOID, MaskCoding, decode, describe_value, read_mask
from data.masks import raw_values as distinct_values

# the folder names the layouts accept (MMSegmentation's img_dir/ann_dir, Detectron2's and the
# usual tutorials'); two of them side by side is an error, not a choice
IMAGE_FOLDERS = ("images", "imgs", "img", "img_dir")
MASK_FOLDERS = ("masks", "annotations", "labels", "ann_dir")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless only: a JPEG mask blurs the ids
DEFAULT_SPLIT_RATIO = 0.2  # val's share of train when the tree has no val
INFER_SAMPLE = 200  # masks read, evenly spread, to infer the classes when the file names none

LAYOUT_HELP = f"""Expected a folder dataset: images and masks (PNG) paired by file stem, as
    <root>/images/{{train,val}}/x.jpg  and  <root>/masks/{{train,val}}/x.png
 or <root>/{{train,val}}/images/x.jpg  and  <root>/{{train,val}}/masks/x.png
 or <root>/images/x.jpg  and  <root>/masks/x.png  (splits: lists of stems, or split_ratio)
images may be named {", ".join(IMAGE_FOLDERS)}; masks {", ".join(MASK_FOLDERS)}.
A {DATASET_FILE} at <root> names the classes, the mask coding and other paths: docs/data.md,
section "Your own data"."""


# --- the reader every file-based dataset shares ---------------------------------------------


class FolderDataset(torch.utils.data.Dataset):
    """Image/mask pairs read from files, the masks decoded by a `MaskCoding`.

    Args:
        pairs: (image path, mask path) per item, in order.
        coding: what the masks' raw values mean (data/masks.py).
        class_names: one name per class.
        split: the split's name ("train", "val", "test").
        transform: a joint callable `(image, target) -> (image, target)`.
        unmatched: images without a mask and masks without an image seen while pairing (left
            out; check-data reports them).
        hint: appended to the error for a raw value the coding does not define (how to fix it).

    Items are `(image, target)`: image a `tv_tensors.Image` uint8 (3, H, W), target a
    `tv_tensors.Mask` int64 (H, W) with classes 0 .. num_classes-1 and 255 (void).
    """

    ignore_index = VOID

    def __init__(
        self,
        pairs: Iterable[tuple[Path, Path]],
        coding: MaskCoding,
        class_names: Iterable[str],
        split: str,
        transform: Callable | None = None,
        unmatched: Iterable[Path] = (),
        hint: str = "",
    ) -> None:
        pairs = list(pairs)
        self.images = [image for image, _ in pairs]
        self.labels = [mask for _, mask in pairs]
        self.coding = coding
        self.num_classes = coding.num_classes
        self.class_names = tuple(class_names)
        assert len(self.class_names) == self.num_classes, (self.class_names, coding)
        self.split = split
        self.transform = transform
        self.unmatched = list(unmatched)
        self.hint = hint

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        image_path, mask_path = self.images[index], self.labels[index]
        image = read_rgb(image_path)
        raw = read_mask(mask_path)
        if image.shape[:2] != raw.shape[:2]:
            (ih, iw), (mh, mw) = image.shape[:2], raw.shape[:2]
            raise ValueError(
                f"image {image_path} is {iw}x{ih} (WxH) but its mask {mask_path} is {mw}x{mh}"
            )
        try:
            target = decode(raw, self.coding)
        except ValueError as error:  # a colour mask read as index, or the other way round
            raise ValueError(f"mask {mask_path}: {error}") from None
        invalid = target == INVALID
        if invalid.any():
            bad = raw[invalid][None] if raw.ndim == 3 else raw[invalid]  # colours stay rows
            values = distinct_values(bad)[0][:5]
            shown = ", ".join(describe_value(int(v), self.coding.encoding) for v in values)
            raise ValueError(
                f"mask {mask_path} holds raw value(s) {shown} that its coding does not define "
                f"({describe_coding(self.coding)}){self.hint}"
            )
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        target = tv_tensors.Mask(torch.from_numpy(target))
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


def read_rgb(path: Path) -> np.ndarray:
    """The image at `path` as a uint8 (H, W, 3) array; a ValueError names an unreadable file.
    (data/voc.py and cityscapes.py keep their own copies.)"""
    try:
        with PIL.Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError) as error:  # PIL reports some broken PNG chunks as SyntaxError
        raise ValueError(f"cannot read image {path}: {error}") from error


def describe_coding(coding: MaskCoding) -> str:
    """The raw values a coding accepts, in words (for the invalid-value error)."""
    n, void = coding.num_classes, coding.void
    if coding.encoding == "binary":
        return "binary: 0 background, 1 or 255 foreground"
    if coding.encoding == "rgb":
        return f"{n} class colours, {len(coding.void_colours)} void colour(s)"
    void_text = "" if void is None else f", {void} void"
    if coding.class_map:
        return f"the {len(coding.class_map)} raw values of the class_map{void_text}"
    if coding.reduce_zero_label:
        return f"reduce_zero_label: raw 1..{n} are the classes, 0{void_text}"
    return f"raw 0..{n - 1} are the classes{void_text}"


def pair_files(
    image_dir: Path, mask_dir: Path, image_suffixes: Iterable[str], mask_suffixes: Iterable[str]
) -> tuple[dict[str, tuple[Path, Path]], list[Path]]:
    """({stem: (image, mask)} in stem order, unmatched files): the images of `image_dir` and the
    masks of `mask_dir` (subfolders included) whose stems match."""
    images = files_by_stem(image_dir, image_suffixes)
    masks = files_by_stem(mask_dir, mask_suffixes)
    pairs = {stem: (images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())}
    alone = [images[s] for s in images.keys() - masks.keys()]
    alone += [masks[s] for s in masks.keys() - images.keys()]
    return pairs, sorted(alone)


def files_by_stem(folder: Path, suffixes: Iterable[str]) -> dict[str, Path]:
    """{stem: path} of the files under `folder` whose names end in one of `suffixes` (case
    aside; the longest that fits is cut: `x_labelTrainIds.png` has stem x for that suffix)."""
    suffixes = sorted(suffixes, key=len, reverse=True)
    found: dict[str, Path] = {}
    for parent, _, names in os.walk(folder):  # one stat per folder: COCO has 118k files
        for name in names:
            suffix = next((s for s in suffixes if name.lower().endswith(s.lower())), None)
            if suffix is None:
                continue
            path = Path(parent, name)
            stem = path.relative_to(folder).as_posix()[: -len(suffix)]
            if stem in found:
                raise ValueError(
                    f"two files with the stem '{stem}' in {folder}: {found[stem].name} and {name}"
                )
            found[stem] = path
    return found


def named_split(
    dataset: str,
    image_dir: Path,
    mask_dir: Path,
    suffixes: tuple[tuple[str, ...], tuple[str, ...]],
    coding: MaskCoding,
    class_names: tuple[str, ...],
    split: str,
    transform: Callable | None,
    layout_help: str,
) -> FolderDataset:
    """A split of a named dataset: a fixed pair of folders and a fixed coding."""
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise ValueError(f"{dataset} folder not found: {folder}\n{layout_help}")
    pairs, unmatched = pair_files(image_dir, mask_dir, *suffixes)
    if not pairs:
        raise ValueError(
            f"no image/mask pairs in {image_dir} and {mask_dir} ({len(unmatched)} unmatched "
            f"files)\n{layout_help}"
        )
    return FolderDataset(pairs.values(), coding, class_names, split, transform, unmatched)


def check_split(dataset: str, split: str, valid: Iterable[str]) -> None:
    valid = list(valid)
    if split not in valid:
        raise ValueError(f"unknown {dataset} split '{split}'; valid splits: {', '.join(valid)}")


# --- the folder dataset -------------------------------------------------------------------------


@dataclass
class FolderTree:
    """What a folder dataset's tree holds, every split at once (what the summary line says)."""

    root: Path
    layout: str  # "images/<split> + masks/<split>", ...
    splits: dict[str, list[tuple[Path, Path]]]  # split -> (image, mask) pairs
    unmatched: dict[str, list[Path]]  # split -> unmatched files of the folders it was read from
    how: dict[str, str]  # split -> how it was made, when not from its own folder
    coding: MaskCoding
    class_names: tuple[str, ...]
    classes_said: str  # the classes in words, and where they came from
    hint: str  # added to the invalid-value error when the classes were inferred


def read_folder(path: Path, split: str, transform: Callable | None = None) -> FolderDataset:
    """One split of a folder dataset. `path` is the dataset's folder (with or without a
    dataset.yaml) or a dataset.yaml file (its folder is the root unless it names `root:`)."""
    check_split("folder", split, SPLITS)
    tree = scan_folder(Path(path))
    if split not in tree.splits:
        found = ", ".join(tree.splits)
        raise ValueError(f"the folder dataset {tree.root} has no {split} split (it has {found})")
    if not tree.splits[split]:
        raise ValueError(
            f"the {split} split of {tree.root} ({tree.layout}) has no image/mask pair "
            f"({len(tree.unmatched[split])} unmatched files)"
        )
    pairs, unmatched = tree.splits[split], tree.unmatched[split]
    return FolderDataset(
        pairs, tree.coding, tree.class_names, split, transform, unmatched, tree.hint
    )


def scan_folder(path: Path) -> FolderTree:
    """The spec, the layout, every split's pairs and the classes of a folder dataset; says what
    it found in one line (once per process and dataset)."""
    if path.is_file():
        spec = read_spec(path)
        root = spec.root or path.parent
    elif path.is_dir():
        spec = read_spec(path / DATASET_FILE) if (path / DATASET_FILE).is_file() else FolderSpec()
        root = spec.root or path
    else:
        raise ValueError(f"folder dataset not found: {path}\n{LAYOUT_HELP}")
    if not root.is_dir():
        raise ValueError(f"{spec.file}: root: no folder {root}")
    images, masks = (spec.images, spec.masks) if spec.images else find_layout(root)
    found, unmatched, how = split_pairs(root, images, masks, spec)
    splits = {split: found[split] for split in SPLITS if split in found}
    every_mask = [mask for pairs in splits.values() for _, mask in pairs]
    coding, names, classes_said, hint = folder_classes(spec, every_mask)
    layout = f"{images} + {masks}".replace("{split}", "<split>")
    tree = FolderTree(root, layout, splits, unmatched, how, coding, names, classes_said, hint)
    _announce(tree)
    return tree


def find_layout(root: Path) -> tuple[str, str]:
    """The (images, masks) path templates of the tree under root: split folders, split first,
    or one folder."""
    image_name, mask_name = _one_of(root, IMAGE_FOLDERS), _one_of(root, MASK_FOLDERS)
    if image_name and mask_name:
        if (root / image_name / "train").is_dir():
            return f"{image_name}/{{split}}", f"{mask_name}/{{split}}"
        return image_name, mask_name
    if (root / "train").is_dir():
        image_name = _one_of(root / "train", IMAGE_FOLDERS)
        mask_name = _one_of(root / "train", MASK_FOLDERS)
        if image_name and mask_name:
            return f"{{split}}/{image_name}", f"{{split}}/{mask_name}"
    raise ValueError(f"no folders of images and masks found in {root}\n{LAYOUT_HELP}")


def _one_of(folder: Path, names: tuple[str, ...]) -> str | None:
    present = [name for name in names if (folder / name).is_dir()]
    if len(present) > 1:
        raise ValueError(
            f"{folder} holds both {present[0]}/ and {present[1]}/: name the ones to read with "
            f"images: and masks: in {DATASET_FILE}"
        )
    return present[0] if present else None


def split_pairs(root: Path, images: str, masks: str, spec: FolderSpec) -> tuple[dict, dict, dict]:
    """({split: pairs}, {split: unmatched files}, {split: how it was made}) of the layout."""
    suffixes = (
        (spec.image_suffix,) if spec.image_suffix else IMAGE_SUFFIXES,
        (spec.mask_suffix,) if spec.mask_suffix else MASK_SUFFIXES,
    )
    if "{split}" not in images:  # one folder: the split lists, or a seeded share as val
        for folder in (root / images, root / masks):
            if not folder.is_dir():
                raise ValueError(f"folder dataset folder not found: {folder}\n{LAYOUT_HELP}")
        pairs, unmatched = pair_files(root / images, root / masks, *suffixes)
        if spec.splits:
            chosen = {split: _listed(root / file, pairs, spec) for split, file in spec.splits}
            how = {split: f"list {file}" for split, file in spec.splits}
            return chosen, dict.fromkeys(chosen, unmatched), how
        return _ratio_split(list(pairs.values()), unmatched, spec, "all")
    if spec.splits:
        raise ValueError(
            f"{spec.file}: splits: lists pick from one folder of images, but {root} has split "
            f"folders ({images.replace('{split}', '<split>')})"
        )
    found, unmatched = {}, {}
    for split in SPLITS:
        folders = [root / template.format(split=split) for template in (images, masks)]
        if all(folder.is_dir() for folder in folders):
            pairs, unmatched[split] = pair_files(*folders, *suffixes)
            found[split] = list(pairs.values())
    if "train" not in found:
        missing = ", ".join(t.format(split="train") for t in (images, masks))
        raise ValueError(f"no train split in {root}: expected {missing}\n{LAYOUT_HELP}")
    if "val" in found:
        if spec.split_ratio is not None:
            raise ValueError(
                f"{spec.file}: split_ratio: {root} has a val folder "
                f"({images.format(split='val')}); drop split_ratio"
            )
        return found, unmatched, {}
    parts, alone, how = _ratio_split(found["train"], unmatched["train"], spec, "train")
    return {**found, **parts}, {**unmatched, **alone}, how


def _ratio_split(pairs: list, unmatched: list, spec: FolderSpec, source: str) -> tuple:
    """val = the first `split_ratio` of the pairs in a seeded shuffle, train the rest (each in
    stem order)."""
    ratio = DEFAULT_SPLIT_RATIO if spec.split_ratio is None else spec.split_ratio
    count = max(1, round(ratio * len(pairs)))
    if len(pairs) - count < 1:
        raise ValueError(
            f"{len(pairs)} image/mask pair(s): too few to split a share of {ratio:g} off as val"
        )
    order = list(range(len(pairs)))
    random.Random(spec.split_seed).shuffle(order)  # Python's Random: the same on every machine
    val = set(order[:count])
    parts = {
        "train": [pair for i, pair in enumerate(pairs) if i not in val],
        "val": [pair for i, pair in enumerate(pairs) if i in val],
    }
    default = "" if spec.split_ratio is not None else ": no val folder or list"
    how = f"a seeded {round(100 * ratio)} % of {source}, split_seed {spec.split_seed}{default}"
    return parts, dict.fromkeys(parts, unmatched), {"val": how}


def _listed(list_file: Path, pairs: dict[str, tuple], spec: FolderSpec) -> list[tuple]:
    """The pairs a split list names, one stem (or file name) per line, in the list's order."""
    if not list_file.is_file():
        raise ValueError(f"{spec.file}: splits: list file not found: {list_file}")
    lines = [line.split() for line in list_file.read_text().splitlines()]
    listed = [_list_stem(words[0], pairs) for words in lines if words]
    if not listed:
        raise ValueError(f"{spec.file}: splits: the list {list_file} is empty")
    missing = [stem for stem in listed if stem not in pairs]
    if missing:
        raise ValueError(
            f"{list_file} lists {len(missing)} stem(s) without both an image and a mask, "
            f"first: {missing[0]}"
        )
    return [pairs[stem] for stem in listed]


def _list_stem(word: str, pairs: dict) -> str:
    """A list entry as a stem: `x`, `x.jpg` and `images/x.jpg` all name x."""
    word = word.strip("/")
    for candidate in (word, Path(word).with_suffix("").as_posix(), Path(word).stem):
        if candidate in pairs:
            return candidate
    return word


def folder_classes(spec: FolderSpec, masks: list[Path]) -> tuple:
    """(coding, class names, the classes in words, error hint): what the spec says, the rest
    inferred from a sample of the masks."""
    encoding = spec.mask_encoding or ("rgb" if spec.colours else "index")
    count = len(spec.class_names) or spec.num_classes
    if count is None and encoding == "binary":
        count = 2
    if count is None and spec.class_map:
        count = max(class_id for _, class_id in spec.class_map if class_id != VOID) + 1
    if count is None:
        count, encoding, found, read = infer_classes(spec, masks)
        said = f"{count} classes inferred {found}"
        hint = (
            f"; {count} classes were inferred from {read}: write num_classes or classes in "
            f"{DATASET_FILE}"
        )
    else:
        said, hint = f"{count} classes, {encoding} masks ({spec.file or 'the defaults'})", ""
    if spec.class_names:
        names = spec.class_names
    elif encoding == "binary":
        names = ("background", "foreground")
    else:
        names = tuple(f"class_{i}" for i in range(count))
    coding = MaskCoding(
        num_classes=count,
        encoding=encoding,
        void=spec.void,
        reduce_zero_label=spec.reduce_zero_label,
        class_map=spec.class_map,
        colours=spec.colours,
        void_colours=spec.void_colours,
    )
    return coding, names, said, hint


def infer_classes(spec: FolderSpec, masks: list[Path]) -> tuple[int, str, str, str]:
    """(number of classes, encoding, the values found, which masks were read) from up to
    INFER_SAMPLE masks spread evenly over all splits: the largest value that is not void, plus
    one (reduce_zero_label: not plus one). Masks of only 0 and 255 are binary, 255 the
    foreground, unless the spec names its void."""
    step = max(1.0, len(masks) / INFER_SAMPLE)
    sample = [masks[int(i * step)] for i in range(min(len(masks), INFER_SAMPLE))]
    read = (
        f"all {len(masks):,} masks"
        if len(sample) == len(masks)
        else (f"{len(sample)} of the {len(masks):,} masks, evenly spread")
    )
    values: set[int] = set()
    for path in sample:
        raw = read_mask(path)
        if raw.ndim == 3:
            colours = distinct_values(raw)[0][:4]
            shown = ", ".join(describe_value(int(c), "rgb") for c in colours)
            raise ValueError(
                f"mask {path} is a colour image ({shown}, ...): write mask_encoding: rgb and "
                f"each class's colour in {DATASET_FILE} (docs/data.md, Your own data)"
            )
        values.update(np.unique(raw).tolist())
    if not spec.void_given and values == {0, VOID}:
        found = (
            f"from masks of only 0 and 255 ({read}): read as binary, 255 = foreground; write "
            f"mask_encoding: binary in {DATASET_FILE} to say so"
        )
        return 2, "binary", found, read
    classes = sorted(v for v in values if v != spec.void)
    if not classes:
        raise ValueError(f"the masks hold only void ({spec.void}) in {read}: no class to learn")
    count = classes[-1] + (0 if spec.reduce_zero_label else 1)
    shown = ", ".join(map(str, classes[:12])) + (", ..." if len(classes) > 12 else "")
    notes = [f"{spec.void} void"] if spec.void is not None and spec.void in values else []
    notes += ["binary 0/1"] if classes == [0, 1] else []
    notes_text = f" ({', '.join(notes)})" if notes else ""
    return count, "index", f"from the mask values {shown}{notes_text} in {read}", read


_ANNOUNCED: set[Path] = set()  # folder datasets described already (once per process)


def _announce(tree: FolderTree) -> None:
    if tree.root in _ANNOUNCED or os.environ.get("RANK", "0") != "0":  # once, rank 0 of DDP
        return
    _ANNOUNCED.add(tree.root)
    counts = [
        f"{split} {len(pairs):,}" + (f" ({tree.how[split]})" if split in tree.how else "")
        for split, pairs in tree.splits.items()
    ]
    unmatched = {path for paths in tree.unmatched.values() for path in paths}
    alone = f"; {len(unmatched)} unmatched file(s) left out" if unmatched else ""
    print(
        f"[folder] {tree.root}: {tree.layout}; {', '.join(counts)}; {tree.classes_said}{alone}",
        flush=True,
    )
