"""Tiny folder datasets and ADE20K / CamVid / COCO-Stuff trees in their real file formats.

Masks are written as the datasets store them: 8-bit grayscale PNGs, palette ("P") PNGs whose
indices are the ids, colour (RGB) PNGs. Images are PNGs (lossless, so a test can compare them
pixel for pixel) unless a layout uses JPEG. Every builder returns what it wrote.
"""

from pathlib import Path

import numpy as np
import PIL.Image
import yaml
from fixtures_datasets import save_gray_png, save_palette_png

HEIGHT, WIDTH = 16, 24


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def stripes(values: list[int], marker: int | None = None) -> np.ndarray:
    """A (HEIGHT, WIDTH) uint8 mask with one vertical band per value, `marker` in the corner."""
    band = -(-WIDTH // len(values))
    mask = np.repeat(np.array(values, dtype=np.uint8), band)[:WIDTH]
    mask = np.repeat(mask[None], HEIGHT, axis=0)
    if marker is not None:
        mask[0, 0] = marker
    return mask


def save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":  # flat colours would survive; tests compare JPEGs loosely
        PIL.Image.fromarray(pixels).save(path, quality=95)
    else:
        PIL.Image.fromarray(pixels).save(path)


def save_mask(path: Path, mask: np.ndarray, kind: str = "gray") -> None:
    """kind: gray (mode L), palette (mode P, VOC colours), rgb ((H, W, 3) colour PNG)."""
    if kind == "palette":
        save_palette_png(path, mask)
    elif kind == "rgb":
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(mask.astype(np.uint8), mode="RGB").save(path)
    else:
        save_gray_png(path, mask)


def write_pairs(
    image_dir: Path,
    mask_dir: Path,
    masks: dict[str, np.ndarray],
    kind: str = "gray",
    image_suffix: str = ".png",
    mask_suffix: str = ".png",
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{stem: (image, mask)} written as image_dir/<stem><image_suffix> and
    mask_dir/<stem><mask_suffix>."""
    written = {}
    for number, (stem, mask) in enumerate(masks.items()):
        pixels = image(seed + number)
        save_image(image_dir / f"{stem}{image_suffix}", pixels)
        save_mask(mask_dir / f"{stem}{mask_suffix}", mask, kind)
        written[stem] = (pixels, mask)
    return written


def write_spec(folder: Path, spec: dict, name: str = "dataset.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def index_masks(prefix: str, count: int, num_classes: int, void: bool = True) -> dict:
    """{stem: mask}: stripes of classes 0 .. num_classes-1 (and a void band), the k-th mask with
    class k % num_classes in its corner so each mask is its own."""
    values = list(range(num_classes)) + ([255] if void else [])
    return {
        f"{prefix}{k:03d}": stripes(values[k % 2 :] + values[: k % 2], marker=k % num_classes)
        for k in range(count)
    }


# --- the field's datasets ------------------------------------------------------------------------


def make_ade20k(root: Path, train: int = 4, val: int = 2) -> dict[str, dict]:
    """ADEChallengeData2016 with JPEG images and 8-bit annotation PNGs of raw values 0 (other
    objects), 1, 2, 150 and the k-th image's marker 3 + k."""
    base = root / "ADEChallengeData2016"
    written = {}
    for split, folder, count in (("train", "training", train), ("val", "validation", val)):
        masks = {
            f"ADE_{split}_{k:08d}": stripes([0, 1, 2, 150], marker=3 + k)
            for k in range(1, count + 1)
        }
        written[split] = write_pairs(
            base / "images" / folder, base / "annotations" / folder, masks, image_suffix=".jpg"
        )
    return written


def make_camvid_segnet(root: Path, counts: dict[str, int] | None = None) -> dict[str, dict]:
    """CamVid/{split} + CamVid/{split}annot PNGs with raw values 0..11 (11 = Unlabelled)."""
    counts = counts or {"train": 3, "val": 2, "test": 2}
    base = root / "CamVid"
    written = {}
    for split, count in counts.items():
        masks = {f"0001TP_{k:06d}": stripes([0, 3, 10, 11], marker=k) for k in range(count)}
        written[split] = write_pairs(base / split, base / f"{split}annot", masks)
    return written


def make_camvid_guide(root: Path) -> dict[str, dict]:
    """CamVid in the guides' layout: root/{train,val}/images + root/{train,val}/masks."""
    written = {}
    for split, count in (("train", 3), ("val", 2)):
        masks = {f"Seq05VD_f{k:05d}": stripes([0, 3, 10, 11], marker=k) for k in range(count)}
        written[split] = write_pairs(root / split / "images", root / split / "masks", masks)
    return written


def make_cocostuff(root: Path, converted: bool = False, raw_values=(0, 12, 26, 181, 255)):
    """coco_stuff164k with JPEG images and stuffthingmaps PNGs of `raw_values` (the k-th image
    marked with raw 40 + k); `converted` also writes the <id>_labelTrainIds.png beside each,
    whose ids differ from the raw file's (so a test can tell which one was read)."""
    base = root / "coco_stuff164k"
    written = {}
    for split, folder, count in (("train", "train2017", 3), ("val", "val2017", 2)):
        masks = {f"{k:012d}": stripes(list(raw_values), marker=40 + k) for k in range(count)}
        image_dir, mask_dir = base / "images" / folder, base / "annotations" / folder
        written[split] = write_pairs(image_dir, mask_dir, masks, image_suffix=".jpg")
        if converted:
            for stem in masks:
                train_ids = stripes([0, 11, 170, 255], marker=100)
                save_mask(mask_dir / f"{stem}_labelTrainIds.png", train_ids)
                written[split][stem] = (written[split][stem][0], train_ids)
    return written
