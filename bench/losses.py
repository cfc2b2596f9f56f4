"""Speed and memory of every loss: the six metric surrogates against the baselines.

For each loss and input size it measures, on float32 CPU logits with requires_grad:
  ms        forward + backward wall time, median over repeats after warm-up (the first call of a
            surrogate compiles its fused elementwise kernels, so warm-up is at least 2 calls)
  saved MB  bytes of the distinct storages autograd saves for backward during the forward
            (torch.autograd.graph.saved_tensors_hooks), the logits included when a loss keeps
            them (the region surrogates keep the logits instead of the probabilities): the
            memory a loss keeps alive until backward, which is what limits the batch size
Both are also given relative to cross-entropy measured in the same run; the calls of each loss
and of cross-entropy alternate, so that both see the same state of a noisy machine. The "target"
column is the budget relative to cross-entropy (issue 19): wall time 1.5x for the region
surrogates, 2x for biou, 5x for bf1, and saved memory 4x for bf1.

The rows `spec-miou` and `spec-dice` are metric-spec surrogates (surrogates/spec.py,
SurrogateLoss(metric=spec)) of the miou and dice specs with the asl-voc-miou curves. Their
target is relative to the hand-written miou surrogate (issue 32: within 1.2x), timed a second
time alternately with it, as every row is with CE; asking for them also runs the miou row.

Page faults: with glibc's default heap a freed large buffer often goes back to the kernel, the
next one costs page faults (on the development machine about 3 us per 4 KB page), and whether a
call pays them depends on what ran before it, CE's calls included (README, Performance).
Prefixing the bench with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 keeps every freed
buffer in the process's heap, so that no call pays them and the ratios compare arithmetic and
memory traffic.

Inputs: logits = randn * 2; targets are random blobs (a coarse 8 x 8 label grid upsampled with
nearest, so edge density looks like real masks) with a few void (255) pixels, drawn from all 21
classes, or with --classes K from K random classes per image (a VOC image holds 2-3).

--floor adds, per size, a lower bound on what any implementation of the surrogates costs: the
curve work that cross-entropy does not do, one compiled pass of each curve's value and slope over
every probability (N x C x H x W values, reduced to a sum so that no output is written), timed
alternately with CE. Beyond the softmax forward and backward, which CE does too, a region
surrogate evaluates its union curve at every probability, bf1 its four curves (and an erosion and
the sums, not counted), so 1 + curves / CE bounds their ratio from below.

The field's baselines (wce, dpce, ssim, ce_dice, tversky, focal_tversky, gdice, boundary,
hausdorff; issue 33) have rows with no target. The distance-map losses (dpce, boundary,
hausdorff) compute exact distance transforms at every call (surrogates/distance.py); their cost
grows with the farthest distance in the batch, so --voc-step times their extra work, transform
included, where it matters on a CPU: against a VOC proxy step (DeepLabV3+ R50, OS 8, aux head,
batch 32 at 128 px, one thread; bench/train_step.py's voc_step_seconds), on the proxy's loss
inputs (32 x 21 x 128 x 128 logits, 3 classes an image, one image holding a single small
object in a corner: the farthest distance a 128 px crop can have, the transform's worst case),
called twice as the main and aux heads call it. Target: under 10 % of the step.

--proxy-step times the whole shapes proxy training step (`lite` width 16, batch 16 of 32 px
crops, 7 classes, AdamW, one thread: experiments/data/shapes.yaml's proxy) with CE, the built-in
miou surrogate and the dice and fbeta spec surrogates, the losses taking turns step by step.
Target for the spec surrogates: within 1.10x of the step with CE (issue 32).

Run: ./launch.sh bench losses [--quick] [--threads N] [--classes K] [--losses bf1 ...]
     [--profile LOSS] [--floor] [--voc-step] [--proxy-step]
     (= .venv/bin/python bench/losses.py ...).
     SLS_COMPILE=0 measures the eager kernels.
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import surrogates.fused
from surrogates import METRICS, PRESETS, SurrogateLoss, build_loss
from surrogates.curves import METRIC_CURVES, bezier_value_and_slope, curve_tables
from surrogates.spec import load_spec

NUM_CLASSES = 21
SIZES = ((8, 128, 128), (2, 512, 512))  # (N, H, W)
BASELINES = ("ce", "focal", "dice", "jaccard", "lovasz")
FIELD = ("wce", "dpce", "ssim", "ce_dice", "tversky", "focal_tversky", "gdice", "boundary")
FIELD += ("hausdorff",)  # the field's baselines (issue 33)
DISTANCE_LOSSES = ("dpce", "boundary", "hausdorff")
VOC_STEP_TARGET = 0.10  # a distance-map loss's extra work, share of a CPU VOC proxy step
TARGETS = {"miou": 1.5, "fwiou": 1.5, "macc": 1.5, "gacc": 1.5, "biou": 2.0, "bf1": 5.0}
MEMORY_TARGETS = {"bf1": 4.0}
SPEC_ROWS = {"spec-miou": "miou", "spec-dice": "dice"}  # row -> the metric spec it runs
SPEC_TARGET = 1.2  # x the hand-written miou surrogate's time (issue 32)
PROXY_STEP_TARGET = 1.10  # a spec surrogate's shapes proxy step, x the step with CE


def blob_target(
    n: int, h: int, w: int, num_classes: int, per_image: int | None = None, void: float = 0.005
) -> torch.Tensor:
    """(N, H, W) int64 labels: a coarse 8 x 8 random grid upsampled with nearest, plus void;
    each image's grid drawn from per_image random classes (default: all)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, per_image or num_classes, (n, 1, 8, 8), generator=g)
    if per_image:  # the k-th class of each image's own random choice of classes
        chosen = torch.stack([torch.randperm(num_classes, generator=g) for _ in range(n)])
        coarse = chosen.gather(1, coarse.view(n, -1)).view_as(coarse)
    target = F.interpolate(coarse.float(), size=(h, w), mode="nearest")[:, 0].long()
    return target.masked_fill(torch.rand(n, h, w, generator=g) < void, 255)


def build_baseline(name: str) -> nn.Module:
    if name == "wce":  # the time does not depend on the weights' values
        return build_loss(name, class_frequencies=list(range(1, NUM_CLASSES + 1)))
    return build_loss(name)


def make_losses(names: list[str]) -> dict[str, nn.Module]:
    """CE (the reference of every ratio) and the losses named."""
    baselines = (*BASELINES, *FIELD)
    losses = {name: build_baseline(name) for name in baselines if name == "ce" or name in names}
    wants_spec = any(name in SPEC_ROWS for name in names)
    for metric in METRICS:
        if metric in names or (metric == "miou" and wants_spec):  # the spec rows' reference
            losses[metric] = SurrogateLoss(metric, f"asl-voc-{metric}", num_classes=NUM_CLASSES)
    for row, spec in SPEC_ROWS.items():
        if row in names:
            losses[row] = SurrogateLoss(load_spec(spec), "asl-voc-miou", num_classes=NUM_CLASSES)
    return losses


def step(loss_fn: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> None:
    logits.grad = None
    loss_fn(logits, target).backward()


def time_ms(
    loss_fn: nn.Module,
    baseline: nn.Module,
    logits: torch.Tensor,
    target: torch.Tensor,
    repeats: int,
) -> tuple[float, float]:
    """Median forward + backward time in ms of loss_fn and of the baseline, timed alternately
    (after 3 warm-up calls each) so that both see the same state of a shared machine."""
    for _ in range(3):
        step(loss_fn, logits, target)
        step(baseline, logits, target)
    times = {loss_fn: [], baseline: []}
    for _ in range(repeats):
        for fn in (baseline, loss_fn):
            start = time.perf_counter()
            step(fn, logits, target)
            times[fn].append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[loss_fn]), 1e3 * statistics.median(times[baseline])


def saved_mb(loss_fn: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> float:
    """MB of the distinct storages autograd saves for backward (the logits too, if saved)."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    logits.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(logits, target)
    loss.backward()
    return sum(storages.values()) / 2**20


def bench_size(
    losses: dict[str, nn.Module], n: int, h: int, w: int, repeats: int, per_image: int | None
) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(n, NUM_CLASSES, h, w, generator=g) * 2).requires_grad_()
    target = blob_target(n, h, w, NUM_CLASSES, per_image)
    rows = []
    for name, loss_fn in losses.items():
        ms, ce_ms = time_ms(loss_fn, losses["ce"], logits, target, repeats)
        rows.append(
            {"loss": name, "ms": ms, "ce_ms": ce_ms, "mb": saved_mb(loss_fn, logits, target)}
        )
        if name in SPEC_ROWS:  # x the hand-written miou surrogate, timed alternately
            spec_ms, miou_ms = time_ms(loss_fn, losses["miou"], logits, target, repeats)
            rows[-1]["x_miou"] = spec_ms / miou_ms
    return rows


def print_table(rows: list[dict]) -> None:
    ce = next(r for r in rows if r["loss"] == "ce")
    print("| loss | ms (fwd+bwd) | x CE | saved MB | x CE | target | met |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        t_ratio, m_ratio = r["ms"] / r["ce_ms"], r["mb"] / ce["mb"]
        target, memory = TARGETS.get(r["loss"]), MEMORY_TARGETS.get(r["loss"])
        goal = f"<= {target:.1f}x" if target else ""
        met = ("yes" if t_ratio <= target else "NO") if target else ""
        if memory:
            goal += f", memory <= {memory:.0f}x"
            met += ", " + ("yes" if m_ratio <= memory else "NO")
        if r["loss"] in SPEC_ROWS:
            goal = f"<= {SPEC_TARGET:.1f}x miou surrogate ({r['x_miou']:.2f}x)"
            met = "yes" if r["x_miou"] <= SPEC_TARGET else "NO"
        baseline = r["loss"] in BASELINES or r["loss"] in FIELD
        name = r["loss"] if baseline else f"surrogate {r['loss']}"
        print(
            f"| {name} | {r['ms']:.1f} | {t_ratio:.2f} | {r['mb']:.1f} | {m_ratio:.2f} "
            f"| {goal} | {met} |"
        )


def _curve_sums(x: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    value, slope = bezier_value_and_slope(x, table)
    return value.sum(), slope.sum()


_fused_curve_sums = surrogates.fused.fused(_curve_sums)


def print_floor(n: int, h: int, w: int, repeats: int) -> None:
    """ms of one value-and-slope pass of each curve over N x C x H x W probabilities, against CE
    timed alternately, and the lower bounds 1 + curves / CE (see the module docstring)."""
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(n, NUM_CLASSES, h, w, generator=g) * 2).requires_grad_()
    target = blob_target(n, h, w, NUM_CLASSES)
    p = torch.softmax(logits.detach(), 1).reshape(-1)
    ce = build_loss("ce")
    curves = {
        "miou union curve": curve_tables(PRESETS["asl-voc-miou"], METRIC_CURVES["miou"])[1:],
        "bf1 curves h1-h4": curve_tables(PRESETS["asl-voc-bf1"], METRIC_CURVES["bf1"]),
    }
    print("| curve work | ms | x CE | lower bound on the surrogate's x CE |")
    print("|---|---:|---:|---:|")
    for name, tables in curves.items():
        times, ce_times = [], []
        for _ in range(3 + repeats):  # the first 3: warm-up (and compilation)
            start = time.perf_counter()
            step(ce, logits, target)
            ce_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            for table in tables:
                _fused_curve_sums(p, table)
            times.append(time.perf_counter() - start)
        ms = 1e3 * statistics.median(times[3:])
        ce_ms = 1e3 * statistics.median(ce_times[3:])
        print(f"| {name} | {ms:.1f} | {ms / ce_ms:.2f} | {1 + ms / ce_ms:.2f} |")


def profile(loss_fn: nn.Module, n: int, h: int, w: int, per_image: int | None) -> None:
    """Top operators by self CPU time for one forward + backward (after warm-up)."""
    logits = (torch.randn(n, NUM_CLASSES, h, w) * 2).requires_grad_()
    target = blob_target(n, h, w, NUM_CLASSES, per_image)
    for _ in range(3):
        step(loss_fn, logits, target)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(loss_fn, logits, target)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def voc_like_target(n: int, side: int) -> torch.Tensor:
    """Labels of 3 classes an image (blobs), the first image background but for a 4 px square
    of class 1 in a corner: the largest distance a side x side crop can hold."""
    target = blob_target(n, side, side, NUM_CLASSES, per_image=3)
    target[0] = 0
    target[0, :4, :4] = 1
    return target


def print_voc_step(repeats: int) -> None:
    """The distance-map losses' extra work over CE, twice a step (main and aux heads), against
    a CPU VOC proxy step, one thread (see the module docstring)."""
    from train_step import voc_step_seconds  # bench/train_step.py

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(32, NUM_CLASSES, 128, 128, generator=g) * 2).requires_grad_()
    target = voc_like_target(32, 128)
    step = voc_step_seconds(torch.device("cpu"), 1 if repeats < 15 else 3)
    print(f"VOC proxy step (DeepLabV3+ R50, batch 32, 128 px), one thread: {step:.2f} s\n")
    print("| loss | ms (fwd+bwd) | CE ms | extra x 2 heads, s | share of the step | target |")
    print("|---|---:|---:|---:|---:|---|")
    ce = build_loss("ce")
    for name in DISTANCE_LOSSES:
        ms, ce_ms = time_ms(build_loss(name), ce, logits, target, max(3, repeats // 3))
        extra = 2 * (ms - ce_ms) / 1e3
        met = "yes" if extra / step < VOC_STEP_TARGET else "NO"
        print(
            f"| {name} | {ms:.0f} | {ce_ms:.0f} | {extra:.2f} | {100 * extra / step:.1f} % "
            f"| < {100 * VOC_STEP_TARGET:.0f} %: {met} |",
            flush=True,
        )


def print_proxy_step(repeats: int) -> None:
    """The shapes proxy's training step with CE, the miou surrogate and two spec surrogates,
    one thread, the losses taking turns (see the module docstring)."""
    from segnets import build_segnet

    torch.set_num_threads(1)
    classes = 7
    losses = {
        "ce": build_loss("ce"),
        "miou": SurrogateLoss("miou", "asl-voc-miou", num_classes=classes),
        "spec-dice": SurrogateLoss(load_spec("dice"), "asl-voc-miou", num_classes=classes),
        "spec-fbeta": SurrogateLoss(load_spec("fbeta"), "asl-voc-miou", num_classes=classes),
    }
    torch.manual_seed(0)
    model = build_segnet("lite", classes, width=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-4)
    images = torch.randn(16, 3, 32, 32)
    target = blob_target(16, 32, 32, classes)
    times = {name: [] for name in losses}
    for i in range(3 + 10 * repeats):  # 3 warm-up rounds (the surrogates compile)
        for name, loss_fn in losses.items():
            start = time.perf_counter()
            loss = loss_fn(model(images)["out"], target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= 3:
                times[name].append(time.perf_counter() - start)
    ce = statistics.median(times["ce"])
    print("shapes proxy step (lite width 16, batch 16, 32 px, AdamW), one thread\n")
    print("| loss | ms a step | x CE | target |")
    print("|---|---:|---:|---|")
    for name, values in times.items():
        ratio = statistics.median(values) / ce
        target_cell = ""
        if name.startswith("spec-"):
            met = "yes" if ratio <= PROXY_STEP_TARGET else "NO"
            target_cell = f"<= {PROXY_STEP_TARGET:.2f}x: {met}"
        print(f"| {name} | {1e3 * statistics.median(values):.1f} | {ratio:.2f} | {target_cell} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 15 (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own")
    parser.add_argument(
        "--classes", type=int, metavar="K", help="classes per image (default: all 21)"
    )
    names = [*BASELINES, *FIELD, *METRICS, *SPEC_ROWS]
    parser.add_argument("--losses", nargs="+", choices=names, default=names, help="default: all")
    parser.add_argument("--profile", metavar="LOSS", help="also profile this loss (e.g. bf1)")
    parser.add_argument(
        "--floor", action="store_true", help="also the curve work no implementation avoids"
    )
    parser.add_argument(
        "--voc-step", action="store_true", help="only the distance-map losses vs a VOC proxy step"
    )
    parser.add_argument(
        "--proxy-step", action="store_true", help="only the shapes proxy step, spec vs CE"
    )
    args = parser.parse_args()
    if args.classes is not None and not 1 <= args.classes <= NUM_CLASSES:
        parser.error(f"--classes must be in [1, {NUM_CLASSES}], got {args.classes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 15

    if args.voc_step:
        print_voc_step(repeats)
        return
    if args.proxy_step:
        print_proxy_step(repeats)
        return
    compile_on = os.environ.get("SLS_COMPILE", "1") != "0"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU")
    print(f"torch.compile of the fused kernels: {'on' if compile_on else 'off (SLS_COMPILE=0)'}")
    print(f"median of {repeats} repeats after 3 warm-up calls, alternating with CE\n")

    losses = make_losses(args.losses + ([args.profile] if args.profile else []))
    per_image = f", {args.classes} classes per image" if args.classes else ""
    for n, h, w in SIZES:
        print(f"### N={n}, C={NUM_CLASSES}, {h}x{w}{per_image}\n")
        print_table(bench_size(losses, n, h, w, repeats, args.classes))
        print()
        if args.floor:
            print_floor(n, h, w, repeats)
            print()
    if compile_on and not surrogates.fused._enabled:
        print("note: torch.compile failed during the run; surrogates ran eager kernels\n")
    if args.profile:
        n, h, w = SIZES[0]
        print(f"### profile of {args.profile}, N={n}, {h}x{w}\n")
        profile(losses[args.profile], n, h, w, args.classes)


if __name__ == "__main__":
    main()
