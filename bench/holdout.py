"""The reward's seed spread at two holdout fractions (data.params.holdout_fraction): how much of
the search's reward noise the size of the VOC holdout makes, and what a larger holdout costs
the proxy's training set.

On a generated VOC-format tree with --images train.txt ids (VOC's 1,464 by default, so that the
holdouts have VOC's sizes: 147 images at 0.1, 440 at 0.3) of 4:3 JPEGs, 200-260 px, holding 1-3
ellipses of classes 1..20 (each class its own colour, with noise), ringed by void as VOC's
objects are, it runs the search's proxy trial (search.trial.run_trial: the mIoU surrogate at
the policy's starting point, the identity curve) at CPU size (lite net of width 12, 48 px crops
of images rescaled to fit 192 x 48, batch 8, AdamW, --iterations; reward images fit to 192 x 48
and centre-cropped to 48, the VOC protocol scaled down) with --seeds training seeds, once per
fraction: each trains on the train list less that holdout and is scored on it.

Prints per fraction: the holdout's images, the proxy's training images and the share it loses,
then the reward (mIoU) and the BIoU and BF1 of the same trials: mean and std over the seeds in
points, and each std relative to the first fraction's. The std of a few seeds is itself rough
(8 seeds: about +-25 %), so a ratio near 1 says "no difference measured", not "none".
The image caches are built once per fraction before the trials (proxy.cache_images).

Run: ./launch.sh bench holdout [--fractions 0.1 0.3] [--seeds 8] [--iterations 300]
                               [--images 1464] [--jobs 2] [--root DIR] [key=value ...]
  key=value  search overrides for the proxy (e.g. proxy.fit.batch_size=16)
With OMP_NUM_THREADS=1 on two cores: ~30 s of setup and 40-90 s per trial, two at a time
(8 seeds: 7 min on a quiet machine; 12 seeds: 19 min beside another job). Figures and the
default they chose: docs/data.md, "The holdout fraction".
"""

import argparse
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import data  # noqa: F401  (first: the torchvision compatibility import)
from experiments.config import parse_overrides
from search.config import Config, resolve
from search.space import initial_raw
from search.trial import build_datasets, run_trial

# the CPU proxy: shapes' lite net and optimiser on VOC-shaped data (as bench gpu's dry run, larger)
PROXY = {
    "proxy.model": "lite", "proxy.model_args": "{width: 12}", "proxy.crop_size": "48",
    "proxy.scale": "[192, 48]", "proxy.eval_scale": "[192, 48]", "proxy.eval_crop": "48",
    "proxy.eval_batch_size": "32", "proxy.fit.batch_size": "8", "proxy.fit.optimizer": "adamw",
    "proxy.fit.lr": "0.01", "proxy.fit.weight_decay": "1e-4", "proxy.fit.head_lr_mult": "1.0",
    "search.rungs": "1", "proxy.fit.workers": "0",
}  # fmt: skip
COLOURS = np.random.default_rng(21).integers(30, 226, (21, 3))  # class -> its RGB colour
COLUMNS = ("miou", "biou", "bf1")  # the reward (the search's metric) first


def write_sample(voc: Path, image_id: str, seed: int) -> None:
    """A 4:3 JPEG (landscape or portrait) and its palette PNG: a noisy gradient with 1-3
    ellipses of classes 1..20 in their colours, each ringed by void (255)."""
    rng = np.random.default_rng(seed)
    long_side = int(rng.integers(200, 261))
    h, w = (
        (long_side * 3 // 4, long_side) if rng.random() < 0.75 else (long_side, long_side * 3 // 4)
    )
    yy, xx = np.ogrid[:h, :w]
    top, bottom = rng.uniform(40, 200, (2, 3))
    image = top + (bottom - top) * (yy / h)[..., None] + rng.normal(0, 10, (h, w, 3))
    label = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cy, ry = rng.uniform(0.2, 0.8) * h, rng.uniform(0.1, 0.3) * h
        cx, rx = rng.uniform(0.2, 0.8) * w, rng.uniform(0.1, 0.3) * w
        distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        class_index = int(rng.integers(1, 21))
        label[distance <= 1.1] = 255
        label[distance <= 1] = class_index
        inside = distance <= 1
        image[inside] = COLOURS[class_index] + rng.normal(0, 12, (int(inside.sum()), 3))
    PIL.Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
        voc / "JPEGImages" / f"{image_id}.jpg", quality=90
    )
    png = PIL.Image.fromarray(label)
    png.putpalette([v for i in range(256) for v in (i, i, i)])  # "P"; readers use the indices
    png.save(voc / "SegmentationClass" / f"{image_id}.png")


def make_voc(root: Path, images: int) -> None:
    """root/VOCdevkit/VOC2012 with `images` train ids (VOC's own labels) and 10 val ids."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    train = [f"2007_{n:06d}" for n in range(images)]
    val = [f"2008_{n:06d}" for n in range(10)]
    for number, image_id in enumerate(train + val):
        write_sample(voc, image_id, number)
    for split, ids in (("train", train), ("val", val)):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def trial(cfg: Config, seed: int) -> dict:
    return run_trial(cfg, initial_raw(cfg.search.metric, cfg.search.ce_mix), seed)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, std over seeds) in points."""
    points = [100 * v for v in values]
    return statistics.fmean(points), statistics.stdev(points) if len(points) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--seeds", type=int, default=8, help="training seeds per fraction")
    parser.add_argument("--iterations", type=int, default=300, help="of each proxy trial")
    parser.add_argument("--images", type=int, default=1464, help="train.txt ids to generate")
    parser.add_argument("--jobs", type=int, default=2, help="trials at once")
    parser.add_argument("--root", help="an existing VOC tree (default: generate one)")
    parser.add_argument("overrides", nargs="*", help="search key=value for the proxy")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root).resolve() if args.root else Path(tmp)
        if not args.root:
            make_voc(root, args.images)
            print(f"[holdout] {args.images:,} train images generated under {root}", flush=True)
        base = {"data": "voc", "data.root": str(root), "proxy.fit.iterations": str(args.iterations)}
        configs, sizes = {}, {}
        for fraction in args.fractions:
            words = base | PROXY | {"data.params.holdout_fraction": str(fraction)}
            configs[fraction] = cfg = resolve("miou", words | parse_overrides(args.overrides))
            train_set, reward_set = build_datasets(cfg)  # the image caches, once, before trials
            sizes[fraction] = (len(reward_set), len(train_set))
        trials = len(args.fractions) * args.seeds
        seconds = time.perf_counter() - started
        print(f"[holdout] setup {seconds:.0f}s; {trials} trials, {args.jobs} at a time", flush=True)
        threads = max(1, torch.get_num_threads() // args.jobs)
        context = multiprocessing.get_context("spawn")  # no forked torch threads or caches
        with ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=set_threads, initargs=(threads,)
        ) as pool:
            futures = {
                (fraction, seed): pool.submit(trial, configs[fraction], seed)
                for fraction in args.fractions
                for seed in range(args.seeds)
            }
            results = {key: future.result() for key, future in futures.items()}
    print_table(args, sizes, results)
    print(f"[holdout] {time.perf_counter() - started:.0f}s in all")
    return 0


def print_table(args, sizes: dict, results: dict) -> None:
    total = sizes[args.fractions[0]][0] + sizes[args.fractions[0]][1]
    print(
        f"\nVOC-format tree: {total:,} train images; lite proxy, {args.iterations} iterations, "
        f"{args.seeds} seeds per fraction; mean and std over seeds in points"
    )
    header = "| fraction | holdout | proxy trains on (lost) | failed |"
    header += "".join(f" {m} mean | {m} std | std / first |" for m in COLUMNS)
    print(header)
    print("|" + "---|" * (4 + 3 * len(COLUMNS)))
    first = {}
    for fraction in args.fractions:
        held, trained = sizes[fraction]
        ok = [results[fraction, s] for s in range(args.seeds)]
        ok = [r for r in ok if r["status"] == "ok"]
        row = f"| {fraction:g} | {held} | {trained} (-{held / (held + trained):.1%}) |"
        row += f" {args.seeds - len(ok)} |"
        for metric in COLUMNS:
            mean, std = spread([r[metric] for r in ok])
            first.setdefault(metric, std)
            ratio = std / first[metric] if first[metric] else float("nan")
            row += f" {mean:.2f} | {std:.2f} | {ratio:.2f} |"
        print(row)
    trial_seconds = [r["seconds"] for r in results.values()]
    print(f"trial: {statistics.fmean(trial_seconds):.1f}s on average")


if __name__ == "__main__":
    raise SystemExit(main())
