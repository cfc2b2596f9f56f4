"""Throughput of `SegMetrics.update` against torchmetrics' MulticlassJaccardIndex.

Three timings per batch on the same CPU data (median over repeats after warm-up):
  torchmetrics  MulticlassJaccardIndex(num_classes=21, average="macro", ignore_index=255).update
  ours region   SegMetrics(21, boundary=False).update: the confusion matrix (one per-image
                bincount), all that miou / fwiou / macc / gacc / mdice / miou_image need
  ours full     SegMetrics(21, tolerance=5).update: region + biou trimap + bf1 edge matching
Printed: ms per batch, images/s, the region speed-up over torchmetrics (target >= 1.0) and the
cost of the full update relative to the region part (target <= 5x). Once, on the accumulated
data, it also prints whether SegMetrics' miou agrees with torchmetrics' to 1e-6 (a check, not an
assert).

Targets are random blobs (a coarse 8 x 8 label grid upsampled with nearest) with a few void
(255) pixels; predictions are the targets shifted by a few pixels with 2% random labels.

Run: ./launch.sh bench metrics [--quick] [--threads N]  (= .venv/bin/python bench/metrics.py)
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import data.torchvision_compat  # noqa: F401 - before torchmetrics, which imports torchvision
from surrogates import SegMetrics

NUM_CLASSES = 21
SIZES = ((8, 128, 128), (2, 512, 512))  # (N, H, W)
FULL_TARGET = 5.0  # the full update may cost at most 5x the region-only one (issue 19)


def make_batch(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target), both (N, H, W) int64; pred has no void."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, NUM_CLASSES, (n, 1, 8, 8), generator=g)
    target = F.interpolate(coarse.float(), size=(h, w), mode="nearest")[:, 0].long()
    noise = torch.randint(0, NUM_CLASSES, (n, h, w), generator=g)
    pred = torch.where(torch.rand(n, h, w, generator=g) < 0.02, noise, target.roll((2, 3), (1, 2)))
    target = target.masked_fill(torch.rand(n, h, w, generator=g) < 0.005, 255)
    return pred, target


def time_ms(updates: dict[str, Callable], pred: torch.Tensor, target: torch.Tensor, repeats: int):
    """Median time of each update(pred, target) in ms, after 2 warm-up calls; the updaters take
    turns call by call, so that all see the same state of a noisy machine."""
    for _ in range(2):
        for update in updates.values():
            update(pred, target)
    times = {name: [] for name in updates}
    for _ in range(repeats):
        for name, update in updates.items():
            start = time.perf_counter()
            update(pred, target)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def make_metrics() -> dict:
    """The three updaters, keyed by the names printed in the table."""
    # imported here, after data.torchvision_compat (import sorting would put it before)
    from torchmetrics.classification import MulticlassJaccardIndex

    return {
        "torchmetrics": MulticlassJaccardIndex(
            num_classes=NUM_CLASSES, average="macro", ignore_index=255
        ),
        "ours region": SegMetrics(NUM_CLASSES, boundary=False),
        "ours full": SegMetrics(NUM_CLASSES, tolerance=5),
    }


def bench_size(n: int, h: int, w: int, repeats: int) -> None:
    pred, target = make_batch(n, h, w)
    metrics = make_metrics()
    ms = time_ms({name: m.update for name, m in metrics.items()}, pred, target, repeats)
    print(f"### N={n}, C={NUM_CLASSES}, {h}x{w}\n")
    print("| update | ms / batch | images/s | x torchmetrics time |")
    print("|---|---:|---:|---:|")
    for name, t in ms.items():
        print(f"| {name} | {t:.2f} | {1e3 * n / t:.0f} | {t / ms['torchmetrics']:.2f} |")
    speedup = ms["torchmetrics"] / ms["ours region"]
    verdict = "met" if speedup >= 1.0 else "NOT met"
    print(f"\nours region speed / torchmetrics speed: {speedup:.2f} (target >= 1.0: {verdict})")
    full = ms["ours full"] / ms["ours region"]
    verdict = "met" if full <= FULL_TARGET else "NOT met"
    print(f"ours full / ours region cost: {full:.1f}x (target <= {FULL_TARGET:.0f}x: {verdict})\n")


def check_agreement(n: int, h: int, w: int, batches: int = 4) -> None:
    """Accumulate a few batches into all three and compare miou and the confusion matrix."""
    metrics = make_metrics()
    for seed in range(batches):
        pred, target = make_batch(n, h, w, seed=seed)
        for m in metrics.values():
            m.update(pred, target)
    theirs = float(metrics["torchmetrics"].compute())
    ours = metrics["ours full"].compute()["miou"]
    same_cm = torch.equal(
        metrics["ours full"].state["confmat"], metrics["ours region"].state["confmat"]
    )
    diff = abs(ours - theirs)
    print(f"### agreement on {batches} batches of N={n}, {h}x{w}\n")
    print(f"miou: SegMetrics {ours:.8f}, torchmetrics {theirs:.8f}, |diff| {diff:.1e} ", end="")
    print(f"({'agree' if diff <= 1e-6 else 'DISAGREE'} to 1e-6)")
    print(f"region-only confmat == full confmat: {same_cm}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 20 (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 20

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"median of {repeats} repeats after 2 warm-up calls, the updaters taking turns\n")
    for n, h, w in SIZES:
        bench_size(n, h, w, repeats)
    check_agreement(*SIZES[0])


if __name__ == "__main__":
    main()
