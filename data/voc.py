"""PASCAL VOC 2012 semantic segmentation, optionally with the SBD "SegmentationClassAug" labels.

Layout on disk (`root` is the folder that contains VOCdevkit/):

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png          palette PNG, pixel = class index
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    root/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png       optional: SBD, 8-bit grayscale
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt optional: DeepLab's list, all
                                                                10,582 train ids
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/aug.txt       or mmseg's: the 9,118 SBD ids
                                                                beyond VOC's train and val

With the SBD layout the train split is train_aug.txt, or train.txt + aug.txt (10,582 either
way); an id of VOC's train.txt reads VOC's own label (SegmentationClass, with its void bands,
the style of val), every other id its SBD label (SegmentationClassAug), as mmseg does.

Labels hold 0 (background), 1..20 (the classes) and 255 (void: object borders and hard pixels).
VOC comes from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar);
SegmentationClassAug is the SBD conversion described in the DeepLab and mmsegmentation dataset
instructions.
"""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from data.masks import MaskCoding
from data.torchvision_compat import torchvision  # noqa: F401  (loads torchvision on a CPU torch)

# isort: split
from torchvision import tv_tensors

CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
SPLITS = ("train", "val", "trainval")
IGNORE_INDEX = 255

LAYOUT_HELP = """Expected PASCAL VOC 2012 under the dataset root:
    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    <root>/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png          (optional, SBD aug)
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt   (optional, 10,582 ids)
      or <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/aug.txt    (optional, 9,118 ids)
Get VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and extract
it into <root>. For the SBD aug labels follow the Pascal VOC section of
https://mmsegmentation.readthedocs.io/en/latest/user_guides/2_dataset_prepare.html (or the DeepLab
instructions); put DeepLab's id list at ImageSets/Segmentation/train_aug.txt or mmsegmentation's
at ImageSets/Segmentation/aug.txt."""

# A lookup over all 256 byte values: True where the value is a legal VOC label.
_VALID_LABEL = torch.zeros(256, dtype=torch.bool)
_VALID_LABEL[: len(CLASS_NAMES)] = True
_VALID_LABEL[IGNORE_INDEX] = True


class VOCSegmentation(torch.utils.data.Dataset):
    """PASCAL VOC 2012 segmentation; `split="train"` adds the SBD aug labels when present.

    Args:
        root: the folder that contains VOCdevkit/.
        split: "train", "val" or "trainval".
        transform: a joint callable `(image, target) -> (image, target)`.
        aug: None uses SegmentationClassAug + train_aug.txt for split "train" when both exist;
            True requires them; False never uses them.

    Items are `(image, target)`: image a `tv_tensors.Image` uint8 (3, H, W), target a
    `tv_tensors.Mask` int64 (H, W) with values 0..20 and 255 (void).
    """

    num_classes = len(CLASS_NAMES)
    ignore_index = IGNORE_INDEX
    class_names = CLASS_NAMES
    # what the raw label values mean (data/masks.py): what check-data reads the labels with
    coding = MaskCoding(num_classes=len(CLASS_NAMES), encoding="index", void=IGNORE_INDEX)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        aug: bool | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown VOC split {split!r}; valid splits: {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.unmatched: list[Path] = []  # a missing file is an error here, never left out
        voc = self.root / "VOCdevkit" / "VOC2012"
        for folder in (self.root, voc / "JPEGImages", voc / "ImageSets" / "Segmentation"):
            _require_dir(folder)
        self.uses_aug = _resolve_aug(voc, split, aug)
        lists = voc / "ImageSets" / "Segmentation"
        _require_dir(voc / "SegmentationClass")
        if self.uses_aug:
            list_file = _aug_list(voc)
            self.ids, voc_ids = _train_aug_ids(list_file, lists / "train.txt", lists / "val.txt")
        else:
            list_file = lists / f"{split}.txt"
            self.ids = voc_ids = _read_split_list(list_file)
        # True where the label is VOC's own (void bands, val's style); the search's holdout
        # draws from these images only
        voc_labelled = set(voc_ids)
        self.voc_labelled = [i in voc_labelled for i in self.ids]
        self.images = [voc / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.labels = [
            voc / ("SegmentationClass" if ok else "SegmentationClassAug") / f"{i}.png"
            for i, ok in zip(self.ids, self.voc_labelled, strict=True)
        ]
        if self.uses_aug:
            _announce(self, list_file)
        _require_files(self.images, list_file)
        _require_files(self.labels, list_file)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple:
        image_path, label_path = self.images[index], self.labels[index]
        image = _read_rgb(image_path)
        label = _read_label(label_path)
        _check_same_size(image_path, image, label_path, label)
        target = torch.from_numpy(label).long()
        bad = ~_VALID_LABEL[target]
        if bad.any():
            values = torch.unique(target[bad])[:5].tolist()
            raise ValueError(
                f"label {label_path} holds values {values} outside the VOC labels 0..20 and "
                "255 (void)"
            )
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        target = tv_tensors.Mask(target)
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise ValueError(f"VOC dataset folder not found: {path}\n{LAYOUT_HELP}")


def _aug_list(voc: Path) -> Path:
    """DeepLab's train_aug.txt when present, else mmseg's aug.txt (which may not exist)."""
    lists = voc / "ImageSets" / "Segmentation"
    deeplab = lists / "train_aug.txt"
    return deeplab if deeplab.exists() else lists / "aug.txt"


def _train_aug_ids(list_file: Path, train_list: Path, val_list: Path) -> tuple[list, list]:
    """(the train split's ids, those of VOC's train.txt). DeepLab's train_aug.txt lists the
    whole split; mmseg's aug.txt only the SBD ids that train.txt lacks (used alone it would drop
    VOC's 1,464 train images). A list that shares an id with val.txt is refused."""
    voc_ids, listed = _read_split_list(train_list), _read_split_list(list_file)
    if list_file.name == "train_aug.txt":
        ids = listed
    else:
        known = set(voc_ids)
        ids = voc_ids + [i for i in listed if i not in known]
    if val_list.is_file():
        val = set(_read_split_list(val_list))
        leaked = [i for i in ids if i in val]
        if leaked:
            raise ValueError(
                f"{list_file} lists {len(leaked)} id(s) of val.txt, e.g. {leaked[0]}: the model "
                "would train on the evaluation images (DeepLab's train_aug.txt and mmseg's "
                "aug.txt hold none)"
            )
    return ids, voc_ids


_ANNOUNCED: set[Path] = set()  # train splits described already (once per process)


def _announce(dataset: "VOCSegmentation", list_file: Path) -> None:
    if list_file in _ANNOUNCED or os.environ.get("RANK", "0") != "0":  # once, rank 0 of DDP
        return
    _ANNOUNCED.add(list_file)
    own = sum(dataset.voc_labelled)
    print(
        f"[voc] train split: {len(dataset.ids):,} images ({list_file.name}): {own:,} with VOC "
        f"labels (SegmentationClass), {len(dataset.ids) - own:,} with SBD labels "
        "(SegmentationClassAug)",
        flush=True,
    )


def _resolve_aug(voc: Path, split: str, aug: bool | None) -> bool:
    """Whether to read SBD aug labels; a half-installed aug layout is an error, not a fallback."""
    if aug is False:
        return False
    if split != "train":
        if aug:
            raise ValueError(f"aug=True applies to split 'train' only, got split {split!r}")
        return False
    parts = {"folder": voc / "SegmentationClassAug", "id list": _aug_list(voc)}
    present = {name: path.exists() for name, path in parts.items()}
    if all(present.values()):
        return True
    if aug is None and not any(present.values()):
        return False
    # aug=True without the files, or aug=None with only one of the two: falling back to the 1,464
    # plain train ids would quietly train on a seventh of the 10,582 aug images.
    lists = voc / "ImageSets" / "Segmentation"
    parts["id list"] = f"{lists / 'train_aug.txt'} (or {lists / 'aug.txt'})"
    missing = ", ".join(str(parts[name]) for name, ok in present.items() if not ok)
    raise ValueError(
        f"SBD aug layout incomplete, missing: {missing}. Pass aug=False to train on the plain VOC "
        f"train ids.\n{LAYOUT_HELP}"
    )


def _read_split_list(list_file: Path) -> list[str]:
    if not list_file.is_file():
        raise ValueError(f"VOC split list not found: {list_file}\n{LAYOUT_HELP}")
    # DeepLab's list_train_aug.txt writes "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
    # per line, other copies write the bare id: the first word's stem is the id in both.
    lines = [line.split() for line in list_file.read_text().splitlines()]
    ids = [Path(words[0]).stem for words in lines if words]
    if not ids:
        raise ValueError(f"VOC split list is empty: {list_file}")
    return ids


def _require_files(paths: list[Path], list_file: Path) -> None:
    # os.path.isfile is a single stat; this runs once per id (10,582 for train_aug) at construction.
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(paths)} ids listed in {list_file} have no file, "
            f"first: {missing[0]}"
        )


# data/cityscapes.py repeats these three readers on purpose (STYLE rule 20): two callers do not
# make a shared module.
def _read_rgb(path: Path) -> np.ndarray:
    """The image at `path` as a uint8 (H, W, 3) array; a ValueError names an unreadable file."""
    try:
        with PIL.Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError) as error:  # PIL reports some broken PNG chunks as SyntaxError
        raise ValueError(f"cannot read image {path}: {error}") from error


def _read_label(path: Path) -> np.ndarray:
    """The index PNG at `path` as a uint8 (H, W) array of raw pixel indices.

    A palette ("P") PNG must not be converted: its pixels are the class indices and the palette
    only colours them. Any other mode (e.g. RGB) is not an index image.
    """
    try:
        with PIL.Image.open(path) as label:
            if label.mode not in ("P", "L"):
                raise ValueError(
                    f"label {path} has PIL mode {label.mode!r}; expected an 8-bit index PNG "
                    "(mode 'P' or 'L')"
                )
            return np.array(label)
    except (OSError, SyntaxError) as error:
        raise ValueError(f"cannot read label {path}: {error}") from error


def _check_same_size(
    image_path: Path, image: np.ndarray, label_path: Path, label: np.ndarray
) -> None:
    if image.shape[:2] != label.shape:
        (ih, iw), (lh, lw) = image.shape[:2], label.shape
        raise ValueError(
            f"image {image_path} is {iw}x{ih} (WxH) but its label {label_path} is {lw}x{lh}"
        )
