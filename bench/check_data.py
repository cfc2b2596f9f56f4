"""The data check's speed (`./launch.sh check-data`, data/check.py): a cold check of VOC-sized
masks, and a cached rerun on a large tree.

Cold: a generated VOC-format tree of --masks images (default 600: 90 % train, 10 % val), each
a 500 x 375 (or, one in four, 375 x 500) palette PNG like VOC's labels (1-3 ellipses of classes
1..20 ringed by a void band on background) and a JPEG of the same size (the check reads only its
header, so the images share one encoded file per orientation). The check runs with one process
and with one per usable core (--workers), no cache; the baseline is the least any check does:
decoding every mask in this process (data.masks.read_mask), measured in the same run. Prints
masks per second and each as a ratio of the baseline.

Cached: a VOC-format tree of --images images (default 10,000; tiny 8 x 6 files, since a cached
rerun only lists and stats them) is checked once to fill the cache, then again: the rerun's time
in this process (datasets built, every file stat-ed, the cached scans read) and the wall time of
`python -m experiments.check_data` on it, next to the same interpreter importing that module and
exiting (the part the check cannot save).

Targets: >= 300 masks/s cold on two cores; a cached rerun on 10,000 images under 5 s.

Run: ./launch.sh bench check_data [--masks 600] [--images 10000] [--workers N]
(named so, not data.py: a bench/data.py would shadow the `data` package for every script in
bench/, which Python runs with bench/ first on its path)
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import PIL.Image

import data  # noqa: F401  (first: the torchvision compatibility import)
from data.check import check_dataset
from data.masks import read_mask

REPO = Path(__file__).resolve().parent.parent

PALETTE = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]


def voc_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Background with 1-3 ellipses of classes 1..20, each ringed by a 3 px void band."""
    yy, xx = np.ogrid[:height, :width]
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cy, ry = rng.uniform(0.2, 0.8) * height, rng.uniform(0.1, 0.35) * height
        cx, rx = rng.uniform(0.2, 0.8) * width, rng.uniform(0.1, 0.35) * width
        distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        label[distance <= 1 + 3 / min(ry, rx)] = 255
        label[distance <= 1] = rng.integers(1, 21)
    return label


def jpeg_bytes(height: int, width: int) -> bytes:
    buffer = BytesIO()
    PIL.Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_tree(root: Path, images: int, size: tuple[int, int] | None) -> None:
    """A VOC-format tree under root: `images` ids, 90 % train and 10 % val; `size` (H, W) gives
    every file that size (tiny files), None VOC's 500 x 375 masks, a quarter of them portrait."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shapes = [size] if size else [(375, 500), (500, 375)]
    encoded = {shape: jpeg_bytes(*shape) for shape in shapes}
    ids = [f"2007_{n:06d}" for n in range(images)]
    for number, image_id in enumerate(ids):
        shape = shapes[0] if size or number % 4 else shapes[1]
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(encoded[shape])
        label = np.zeros(shape, np.uint8) if size else voc_mask(rng, *shape)
        if size:
            label[0, 0] = number % 21
        png = PIL.Image.fromarray(label)
        png.putpalette(PALETTE)
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
    val = max(1, images // 10)
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in ids[val:]))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in ids[:val]))


def decode_only(root: Path) -> float:
    """Seconds to decode every mask of the tree in this process: the baseline."""
    masks = sorted((root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))
    started = time.perf_counter()
    for mask in masks:
        read_mask(mask)
    return time.perf_counter() - started


def timed_check(root: Path, workers: int | None, use_cache: bool) -> tuple[float, object]:
    started = time.perf_counter()
    result = check_dataset("voc", root, workers=workers, use_cache=use_cache)
    assert result.ok, result.problems
    return time.perf_counter() - started, result


def command_seconds(code: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *code], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def cold(masks: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tree(root, masks, None)
        baseline = decode_only(root)
        rows = [("decode only, 1 process (baseline)", baseline)]
        for count in dict.fromkeys((1, workers)):
            rows.append((f"check, {count} process(es)", timed_check(root, count, False)[0]))
    print(f"\ncold check: {masks} VOC-sized masks (500 x 375 palette PNGs), no cache")
    print("| how | seconds | masks/s | speed vs decode only |\n|---|---:|---:|---:|")
    for how, seconds in rows:
        print(f"| {how} | {seconds:.2f} | {masks / seconds:,.0f} | {baseline / seconds:.2f} |")
    print("target: >= 300 masks/s on two cores")


def cached(images: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        make_tree(root, images, (6, 8))
        print(f"\ncached rerun: {images:,} images of 8 x 6 (written in "
              f"{time.perf_counter() - started:.0f}s)")  # fmt: skip
        first, _ = timed_check(root, None, use_cache=True)
        again, result = timed_check(root, None, use_cache=True)
        assert all(report.cached for report in result.splits)
        module = ["-m", "experiments.check_data", "data=voc", f"data.root={root}"]
        whole = command_seconds(module)
        imports = command_seconds(["-c", "import experiments.check_data"])
        print("| run | seconds |\n|---|---:|")
        print(f"| first check (fills the cache) | {first:.2f} |")
        print(f"| cached rerun, in this process | {again:.2f} |")
        print(f"| cached rerun, python -m experiments.check_data | {whole:.2f} |")
        print(f"| of which: importing it (python -c 'import experiments.check_data') | "
              f"{imports:.2f} |")  # fmt: skip
        print("target: a cached rerun on 10,000 images under 5 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--masks", type=int, default=600, help="VOC-sized masks, cold check")
    parser.add_argument("--images", type=int, default=10_000, help="images, cached rerun")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    print(f"bench data: {len(os.sched_getaffinity(0))} usable cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    cold(args.masks, args.workers)
    cached(args.images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
