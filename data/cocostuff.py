"""COCO-Stuff 164k: 171 classes (80 things, 91 stuff).

Layout on disk (`root` is the folder that contains coco_stuff164k/):

    root/coco_stuff164k/images/{train2017,val2017}/<id>.jpg
    root/coco_stuff164k/annotations/{train2017,val2017}/<id>.png
                          (or <id>_labelTrainIds.png, converted by MMSegmentation's script)

The stuffthingmaps PNGs hold the raw COCO ids 0..181 (0-based) and 255 (unlabelled, void). 11
of the 182 ids are COCO thing categories that were never annotated (UNUSED_IDS); the other 171
map in order to the classes 0..170, as MMSegmentation's tools/dataset_converters/
coco_stuff164k.py does (its clsID_to_trID table). A raw value among UNUSED_IDS or above 181 is
invalid, not void: the real masks never hold one, so a mask that does is not a stuffthingmaps
file (another COCO-Stuff release, or a conversion gone wrong) and is refused rather than read
wrongly. A split whose folder holds `*_labelTrainIds.png` masks (already converted, ids 0..170,
255 void) is read as it is, those files only. The data comes from
https://github.com/nightrome/cocostuff (stuffthingmaps_trainval2017.zip) and COCO 2017 images.
"""

from collections.abc import Callable
from pathlib import Path

from data.folder import FolderDataset, check_split, named_split
from data.masks import MaskCoding

CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "banner", "blanket",
    "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light",
    "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
RAW_IDS = 182  # 0..181: COCO's 91 thing ids and 91 stuff ids, 0-based
# COCO thing ids without annotations (0-based: street sign, hat, shoe, eye glasses, plate,
# mirror, window, desk, door, blender, hair brush): absent from clsID_to_trID
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
USED_IDS = tuple(i for i in range(RAW_IDS) if i not in UNUSED_IDS)
assert len(USED_IDS) == len(CLASS_NAMES) == 171
RAW_CODING = MaskCoding(
    num_classes=len(CLASS_NAMES), class_map=tuple((raw, k) for k, raw in enumerate(USED_IDS))
)
TRAIN_ID_CODING = MaskCoding(num_classes=len(CLASS_NAMES))
TRAIN_ID_SUFFIX = "_labelTrainIds.png"
FOLDERS = {"train": "train2017", "val": "val2017"}

LAYOUT_HELP = """Expected COCO-Stuff 164k under the dataset root:
    <root>/coco_stuff164k/images/{train2017,val2017}/*.jpg
    <root>/coco_stuff164k/annotations/{train2017,val2017}/*.png   (or *_labelTrainIds.png)
Unzip COCO's train2017.zip and val2017.zip into images/ and stuffthingmaps_trainval2017.zip
(https://github.com/nightrome/cocostuff) into annotations/."""


def read_cocostuff(root: Path, split: str, transform: Callable | None = None) -> FolderDataset:
    """A split of COCO-Stuff 164k: train or val."""
    check_split("cocostuff", split, FOLDERS)
    base = Path(root) / "coco_stuff164k"
    image_dir = base / "images" / FOLDERS[split]
    mask_dir = base / "annotations" / FOLDERS[split]
    converted = mask_dir.is_dir() and next(mask_dir.glob(f"*{TRAIN_ID_SUFFIX}"), None)
    mask_suffix, coding = (TRAIN_ID_SUFFIX, TRAIN_ID_CODING) if converted else (".png", RAW_CODING)
    suffixes = ((".jpg",), (mask_suffix,))
    return named_split(
        "COCO-Stuff",
        image_dir,
        mask_dir,
        suffixes,
        coding,
        CLASS_NAMES,
        split,
        transform,
        LAYOUT_HELP,
    )
