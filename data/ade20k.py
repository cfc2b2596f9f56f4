"""ADE20K (the SceneParsing benchmark, ADEChallengeData2016): 150 classes.

Layout on disk (`root` is the folder that contains ADEChallengeData2016/):

    root/ADEChallengeData2016/images/{training,validation}/ADE_train_<n>.jpg
    root/ADEChallengeData2016/annotations/{training,validation}/ADE_train_<n>.png

The annotations are 8-bit PNGs: 0 is "other objects" (not one of the 150 classes) and k = 1..150
is class k - 1 of CLASS_NAMES. As MMSegmentation's ADE20KDataset (`reduce_zero_label=True`), 0
becomes void and k -> k - 1. Splits train (training, 20,210 images) and val (validation, 2,000).
The data comes from http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip.
"""

from collections.abc import Callable
from pathlib import Path

from data.folder import FolderDataset, check_split, named_split
from data.masks import MaskCoding

# the SceneParsing objectInfo150 names in order (the first word of each, as MMSegmentation's)
CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
    "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)  # fmt: skip
CODING = MaskCoding(num_classes=len(CLASS_NAMES), reduce_zero_label=True)
FOLDERS = {"train": "training", "val": "validation"}

LAYOUT_HELP = """Expected ADE20K (SceneParsing) under the dataset root:
    <root>/ADEChallengeData2016/images/{training,validation}/*.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/*.png
Get ADEChallengeData2016.zip from http://data.csail.mit.edu/places/ADEchallenge/ and unzip it
into <root>."""


def read_ade20k(root: Path, split: str, transform: Callable | None = None) -> FolderDataset:
    """A split of ADE20K: train or val."""
    check_split("ade20k", split, FOLDERS)
    base = Path(root) / "ADEChallengeData2016"
    image_dir, mask_dir = base / "images" / FOLDERS[split], base / "annotations" / FOLDERS[split]
    suffixes = ((".jpg",), (".png",))
    return named_split(
        "ADE20K", image_dir, mask_dir, suffixes, CODING, CLASS_NAMES, split, transform, LAYOUT_HELP
    )
