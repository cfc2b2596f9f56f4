"""Cityscapes fine annotations, mapped to the 19 train ids used for benchmarking.

Layout on disk:

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The labelIds PNGs are 8-bit grayscale with the 34 label ids 0..33 (the "license plate" label, id
-1, is never written to them). `LABEL_TO_TRAIN_ID` is the official table of the cityscapesScripts
`labels.py`; every other id (unlabeled, ego vehicle, parking, rail track, ...) becomes 255 (void).
The data comes from https://www.cityscapes-dataset.com/ (leftImg8bit_trainvaltest.zip and
gtFine_trainvaltest.zip, free after registration). The test split's labels are placeholders.
"""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from data.masks import VOID, MaskCoding
from data.torchvision_compat import torchvision  # noqa: F401  (loads torchvision on a CPU torch)

# isort: split
from torchvision import tv_tensors

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
# labelId -> trainId, from cityscapesScripts labels.py; ids absent here are void (255).
LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
MAX_LABEL_ID = 33
SPLITS = ("train", "val", "test")
IGNORE_INDEX = 255

LAYOUT_HELP = """Expected Cityscapes under the dataset root:
    <root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from
https://www.cityscapes-dataset.com/ (free registration) and unzip both into <root>."""

# A 256-entry table indexed by the raw labelId byte: one gather maps a whole label image.
_TRAIN_ID_LUT = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
for _label_id, _train_id in LABEL_TO_TRAIN_ID.items():
    _TRAIN_ID_LUT[_label_id] = _train_id


class Cityscapes(torch.utils.data.Dataset):
    """Cityscapes fine annotations with the 19 train ids.

    Args:
        root: the folder that contains leftImg8bit/ and gtFine/.
        split: "train", "val" or "test".
        transform: a joint callable `(image, target) -> (image, target)`.

    Items are `(image, target)`: image a `tv_tensors.Image` uint8 (3, H, W), target a
    `tv_tensors.Mask` int64 (H, W) with train ids 0..18 and 255 (void).
    """

    num_classes = len(CLASS_NAMES)
    ignore_index = IGNORE_INDEX
    class_names = CLASS_NAMES
    # every labelId 0..33 named (a train id or void), so a raw value above 33 is invalid, as
    # __getitem__ refuses it; no raw value means void by itself (void=None)
    coding = MaskCoding(
        num_classes=len(CLASS_NAMES),
        encoding="index",
        void=None,
        class_map=tuple((i, LABEL_TO_TRAIN_ID.get(i, VOID)) for i in range(MAX_LABEL_ID + 1)),
    )

    def __init__(
        self, root: str | Path, split: str = "train", transform: Callable | None = None
    ) -> None:
        if split not in SPLITS:
            valid = ", ".join(SPLITS)
            raise ValueError(f"unknown Cityscapes split {split!r}; valid splits: {valid}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.unmatched: list[Path] = []  # a missing label is an error here, never left out
        image_dir, label_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for folder in (self.root, image_dir, label_dir):
            if not folder.is_dir():
                raise ValueError(f"Cityscapes folder not found: {folder}\n{LAYOUT_HELP}")
        self.images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not self.images:
            raise ValueError(
                f"no images matching <city>/*_leftImg8bit.png found in {image_dir}\n{LAYOUT_HELP}"
            )
        self.labels = [_label_path(label_dir, image) for image in self.images]
        missing = [p for p in self.labels if not os.path.isfile(p)]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(self.images)} images in {image_dir} have no label file, "
                f"first: {missing[0]}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        image_path, label_path = self.images[index], self.labels[index]
        image = _read_rgb(image_path)
        label = _read_label(label_path)
        _check_same_size(image_path, image, label_path, label)
        label_ids = torch.from_numpy(label)
        if label_ids.numel() and int(label_ids.max()) > MAX_LABEL_ID:
            raise ValueError(
                f"label {label_path} holds labelId {int(label_ids.max())}, above the largest "
                f"Cityscapes id {MAX_LABEL_ID}; is it a *_labelTrainIds.png or a colour file?"
            )
        target = tv_tensors.Mask(_TRAIN_ID_LUT[label_ids.long()])
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


def _label_path(label_dir: Path, image: Path) -> Path:
    stem = image.name.removesuffix("_leftImg8bit.png")
    return label_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"


# The three readers below repeat data/voc.py's on purpose (STYLE rule 20): two callers do not
# make a shared module.
def _read_rgb(path: Path) -> np.ndarray:
    """The image at `path` as a uint8 (H, W, 3) array; a ValueError names an unreadable file."""
    try:
        with PIL.Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError) as error:  # PIL reports some broken PNG chunks as SyntaxError
        raise ValueError(f"cannot read image {path}: {error}") from error


def _read_label(path: Path) -> np.ndarray:
    """The labelIds PNG at `path` as a uint8 (H, W) array of raw pixel values."""
    try:
        with PIL.Image.open(path) as label:
            if label.mode not in ("P", "L"):
                raise ValueError(
                    f"label {path} has PIL mode {label.mode!r}; expected an 8-bit labelIds PNG "
                    "(mode 'L')"
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
