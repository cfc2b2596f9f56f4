"""Tiny PASCAL VOC 2012 and Cityscapes trees in the real file formats, for tests.

VOC: JPEG images, palette ("P") PNG labels with the VOC colour map, SBD aug labels as grayscale
PNGs, split lists. Cityscapes: PNG images and grayscale labelIds PNGs in <split>/<city>/ folders.
Each builder returns what it wrote so that tests can compare pixel for pixel.
"""

from pathlib import Path

import numpy as np
import PIL.Image

VOC_HEIGHT, VOC_WIDTH = 16, 32
# Flat colours on whole 8x8 JPEG blocks decode to within a few levels of what was written.
VOC_LEFT_RGB, VOC_RIGHT_RGB = (200, 30, 30), (20, 40, 220)
CITY_HEIGHT, CITY_WIDTH = 8, 12
# One row per labelId: unlabeled (0), ego vehicle (1), static (4), road (7), parking (9),
# person (24), car (26), bicycle (33); the last row is a per-image marker set by make_cityscapes.
CITY_LABEL_ROWS = (0, 1, 4, 7, 9, 24, 26, 33)
CITY_TRAIN_ID_ROWS = (255, 255, 255, 0, 255, 11, 13, 18)


def voc_palette() -> list[int]:
    """The VOC colour map (768 ints): the bits of the index, interleaved over R, G and B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        bits = index
        for shift in range(7, -1, -1):  # the lowest index bits land in the highest colour bits
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [r, g, b]
    return palette


def save_palette_png(path: Path, label: np.ndarray) -> None:
    image = PIL.Image.fromarray(label.astype(np.uint8))  # mode "L"; putpalette makes it "P"
    image.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def save_gray_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(label.astype(np.uint8)).save(path)  # a 2-D uint8 array is mode "L"


def voc_image() -> np.ndarray:
    image = np.empty((VOC_HEIGHT, VOC_WIDTH, 3), dtype=np.uint8)
    image[:, : VOC_WIDTH // 2] = VOC_LEFT_RGB
    image[:, VOC_WIDTH // 2 :] = VOC_RIGHT_RGB
    return image


def voc_label(class_index: int) -> np.ndarray:
    """Background on the left, `class_index` on the right, a void (255) band between them."""
    label = np.zeros((VOC_HEIGHT, VOC_WIDTH), dtype=np.uint8)
    label[:, VOC_WIDTH // 2 :] = class_index
    label[:, VOC_WIDTH // 2 - 1 : VOC_WIDTH // 2 + 1] = 255
    label[0, 0] = 20  # the largest valid class, in a corner
    return label


def make_voc(
    root: Path,
    splits: dict[str, list[str]],
    aug_ids: list[str] | None = None,
    aug_list_format: str = "ids",
    aug_list_name: str = "train_aug.txt",
) -> dict[str, dict[str, np.ndarray]]:
    """Write a VOC tree under root/VOCdevkit/VOC2012; aug_ids adds the SBD aug layout.

    Returns {"plain": {id: label}, "aug": {id: label}}; aug labels are mirrored left-right, so a
    test can tell which folder a label came from. aug_list_format "paths" writes
    train_aug.txt the way DeepLab's list does ("/JPEGImages/<id>.jpg /SegmentationClassAug/...");
    aug_list_name "aug.txt" is mmseg's name (its list holds only the SBD ids beyond train, val).
    """
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    (voc / "SegmentationClass").mkdir()
    plain_ids = sorted({i for ids in splits.values() for i in ids})
    written = {"plain": {}, "aug": {}}
    for number, image_id in enumerate(plain_ids):
        label = voc_label(number % 19 + 1)
        save_palette_png(voc / "SegmentationClass" / f"{image_id}.png", label)
        written["plain"][image_id] = label
    for image_id in sorted(set(plain_ids) | set(aug_ids or [])):
        PIL.Image.fromarray(voc_image()).save(
            voc / "JPEGImages" / f"{image_id}.jpg", quality=95, subsampling=0
        )
    for split, ids in splits.items():
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    if aug_ids is not None:
        for number, image_id in enumerate(aug_ids):
            label = np.ascontiguousarray(voc_label(number % 19 + 2)[:, ::-1])
            save_gray_png(voc / "SegmentationClassAug" / f"{image_id}.png", label)
            written["aug"][image_id] = label
        if aug_list_format == "paths":
            lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in aug_ids]
        else:
            lines = [f"{i}\n" for i in aug_ids]
        (lists / aug_list_name).write_text("".join(lines))
    return written


def city_label(marker: int) -> np.ndarray:
    """labelIds, one id per row (CITY_LABEL_ROWS), with `marker` in the last row's first pixels."""
    label = np.repeat(np.array(CITY_LABEL_ROWS, dtype=np.uint8)[:, None], CITY_WIDTH, axis=1)
    label[-1, :3] = marker
    return label


def make_cityscapes(
    root: Path, cities: dict[str, dict[str, int]]
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Write {split: {city: n_images}} under root; returns {split: [(image, labelIds), ...]} in
    sorted file order. The k-th image of a split gets labelId marker 21 + k (vegetation, terrain,
    ...) so a test can check that each image is paired with its own label."""
    rng = np.random.default_rng(0)
    written = {}
    for split, counts in cities.items():
        files = []
        for city in sorted(counts):
            for frame in range(counts[city]):
                files.append((city, f"{city}_000000_{frame:06d}"))
        written[split] = []
        for number, (city, stem) in enumerate(files):
            image = rng.integers(0, 256, (CITY_HEIGHT, CITY_WIDTH, 3), dtype=np.uint8)
            label = city_label(21 + number)
            image_path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(image).save(image_path)
            save_gray_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
            written[split].append((image, label))
    return written


# --- realistic trees: the real path end to end ---------------------------------------------------


def _scene(rng: np.random.Generator, height: int, width: int, num_classes: int, void: bool):
    """An image with 1-3 filled ellipses of random classes on a textured background, and its
    label; with void, a 2 px band of 255 around each object, as VOC's own annotations have."""
    yy, xx = np.mgrid[:height, :width]
    image = rng.integers(60, 120, (height, width, 3)).astype(np.uint8)
    label = np.zeros((height, width), dtype=np.uint8)
    band = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
        distance = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        inside = distance <= 1
        class_index = int(rng.integers(1, num_classes))
        image[inside] = (40 * class_index) % 256, 255 - (30 * class_index) % 256, 128
        label[inside] = class_index
        band |= (distance > 1) & (distance <= (1 + 2 / min(ry, rx)) ** 2)
    if void:
        label[band] = 255
    return image, label


def make_voc_tree(root: Path, layout: str, train: int = 24, sbd: int = 16, val: int = 6) -> dict:
    """A VOC tree with JPEG images of 200-500 px, palette labels with void bands, SBD labels and
    the split lists of one SBD layout: "deeplab" (train_aug.txt: every train id) or "mmseg"
    (aug.txt: the SBD ids only). Returns the ids written per list."""
    rng = np.random.default_rng(1)
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    ids = {
        "train": [f"2007_{n:06d}" for n in range(train)],
        "val": [f"2008_{n:06d}" for n in range(val)],
        "sbd": [f"2009_{n:06d}" for n in range(sbd)],
    }
    for kind, names in ids.items():
        for image_id in names:
            size = (int(rng.integers(200, 501)), int(rng.integers(200, 501)))
            image, label = _scene(rng, *size, num_classes=21, void=kind != "sbd")
            (voc / "JPEGImages").mkdir(exist_ok=True)
            PIL.Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
            if kind == "sbd":
                save_gray_png(voc / "SegmentationClassAug" / f"{image_id}.png", label)
            else:
                save_palette_png(voc / "SegmentationClass" / f"{image_id}.png", label)
                if kind == "train":  # DeepLab's SegmentationClassAug holds every train id
                    save_gray_png(voc / "SegmentationClassAug" / f"{image_id}.png", label)
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in ids["train"]))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in ids["val"]))
    if layout == "deeplab":
        (lists / "train_aug.txt").write_text("".join(f"{i}\n" for i in ids["train"] + ids["sbd"]))
    else:
        (lists / "aug.txt").write_text("".join(f"{i}\n" for i in ids["sbd"]))
    return ids


def make_cityscapes_tree(root: Path, train: int = 12, val: int = 4) -> None:
    """A Cityscapes tree of 256 x 128 PNGs (2:1, as the real 2048 x 1024) and labelIds PNGs."""
    rng = np.random.default_rng(2)
    label_ids = np.array([7, 8, 11, 21, 23, 24, 26, 33], dtype=np.uint8)  # road ... bicycle
    for split, count in (("train", train), ("val", val)):
        for frame in range(count):
            image, label = _scene(rng, 128, 256, num_classes=len(label_ids), void=False)
            label = label_ids[label]
            label[:8] = 0  # an unlabeled strip (void)
            stem = f"{'aachen' if split == 'train' else 'frankfurt'}_000000_{frame:06d}"
            city = stem.split("_")[0]
            image_path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(image).save(image_path)
            save_gray_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
