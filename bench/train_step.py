"""Train-step time of the segmentation networks on CPU, and how long a step waits for data.

Part 1, step time: for each model and input size, the median wall time of one training step
(forward + cross-entropy + backward + SGD step) on a fixed random batch, with 1 and 2 torch
threads, and images per second. Models: `lite` (the CPU proxy net), a tiny `unet` and a small
`deeplabv3plus` on resnet18 (output stride 16, 64 ASPP channels), each at the proxy size
(32 x 32 crops, batch 16) and at a larger size (64 x 64, batch 16). The ratio column compares a
model with `lite` at the same size and thread count.

Part 2, data wait: the proxy trial's own pipeline, the real `data.train_loader` over `shapes`
(64 px images, random 32 px crops, flips; workers=0, as in a proxy trial), feeding `lite` at the
proxy setting. "wait" is the time blocked in `next(loader_iter)`, "step" the forward + backward
+ step after it; the share is wait / (wait + step). Target: < 5 %.

Part 3, VOC proxy data: a generated VOC-format tree (tests/fixtures_datasets.make_voc_tree,
200-500 px JPEGs and palette PNGs) through the VOC proxy's augmentation (fit 512 x 128 times
0.5-2, 128 px crops with cat_max_ratio 0.75, flip, photometric distortion), batch 32, loader in
the training process (workers=0). Time per batch of (a) decoding the files with the per-sample
steps, what every trial did before, and (b) what a trial does now: the shrunk image cache
(data/cache.py) and the flip / distortion / normalisation batch-wise (on the GPU when there is
one); against the step time of the VOC proxy (DeepLabV3+ R50, OS 8, aux head) at that batch.

The CPU is shared and timings are noisy: compare rows within one run, not across runs.

Run: PYTHONPATH=. .venv/bin/python bench/train_step.py [--quick] [--root DIR] [--no-voc]
"""

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import data
from data.transforms import train_transforms
from segnets import build_segnet

NUM_CLASSES = 7
MODELS = {  # name -> (registry name, kwargs)
    "lite": ("lite", {"width": 16}),
    "unet tiny": ("unet", {"base_width": 8, "depth": 3}),
    "deeplabv3plus r18": (
        "deeplabv3plus",
        {
            "backbone": "resnet18",
            "output_stride": 16,
            "aspp_channels": 64,
            "low_level_channels": 16,
        },
    ),
}
SIZES = ((16, 32), (16, 64))  # (batch, side): the proxy crop and a larger one
PROXY = dict(batch=16, crop=32, image=64)  # the data-wait measurement


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    def step(images: torch.Tensor, target: torch.Tensor) -> None:
        loss = F.cross_entropy(model(images)["out"], target, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def build(name: str) -> tuple[torch.nn.Module, callable, int]:
    torch.manual_seed(0)
    registry_name, kwargs = MODELS[name]
    model = build_segnet(registry_name, NUM_CLASSES, **kwargs).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return model, make_step(model, optimizer), sum(p.numel() for p in model.parameters())


def step_ms(name: str, batch: int, side: int, repeats: int) -> float:
    """Median step time in ms on a fixed random batch, after 3 warm-up steps."""
    _, step, _ = build(name)
    images = torch.randn(batch, 3, side, side)
    target = torch.randint(0, NUM_CLASSES, (batch, side, side))
    for _ in range(3):
        step(images, target)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(images, target)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def print_step_table(repeats: int) -> None:
    print("| model | params | batch x side | threads | ms / step | images / s | x lite |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for batch, side in SIZES:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            lite_ms = None
            for name in MODELS:
                ms = step_ms(name, batch, side, repeats)
                lite_ms = lite_ms or ms
                params = build(name)[2]
                print(
                    f"| {name} | {params / 1e3:.0f}k | {batch} x {side} | {threads} | {ms:.1f} "
                    f"| {1e3 * batch / ms:.0f} | {ms / lite_ms:.2f} |",
                    flush=True,
                )


def data_wait(root: str, iterations: int, threads: int) -> dict:
    """Seconds blocked in next(loader_iter) and in the step, over `iterations` real steps."""
    torch.set_num_threads(threads)
    dataset = data.build_dataset(
        "shapes",
        root,
        "train",
        train_transforms(crop_size=PROXY["crop"], photometric=False),
        size=PROXY["image"],
    )
    _, step, _ = build("lite")
    batches = iter(data.train_loader(dataset, PROXY["batch"], seed=0))
    wait = busy = 0.0
    for i in range(iterations + 3):
        start = time.perf_counter()
        images, target = next(batches)
        fetched = time.perf_counter()
        step(images, target)
        done = time.perf_counter()
        if i >= 3:  # warm-up steps excluded
            wait, busy = wait + fetched - start, busy + done - fetched
    return {"wait": wait, "step": busy}


def print_wait_table(root: str, iterations: int) -> None:
    print("| threads | steps | wait s | step s | wait share | ms wait / batch | target |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for threads in (1, 2):
        r = data_wait(root, iterations, threads)
        share = r["wait"] / (r["wait"] + r["step"])
        met = "yes" if share < 0.05 else "NO"
        print(
            f"| {threads} | {iterations} | {r['wait']:.2f} | {r['step']:.2f} | {100 * share:.1f} % "
            f"| {1e3 * r['wait'] / iterations:.1f} | < 5 %: {met} |",
            flush=True,
        )


def voc_batch_seconds(root: str, cached: bool, device: torch.device, batches: int) -> float:
    """Mean seconds per batch of the VOC proxy's data, (b) when cached else (a)."""
    from experiments.config import DataConfig, build_train_set
    from search.config import ProxyConfig
    from segnets.engine import FitConfig, train_batches

    settings = ProxyConfig(cache_images=cached)
    data_cfg = DataConfig(name="voc", root=root)
    if cached:
        train_set = build_train_set(data_cfg, settings, without_holdout=True)
    else:  # the per-sample definition on the file reader
        train_set = data.build_dataset(
            "voc",
            root,
            "train",
            train_transforms(crop_size=128, scale=(512, 128), cat_max_ratio=0.75),
            without_holdout=True,
        )
    stream = train_batches(train_set, FitConfig(batch_size=32, workers=0), device)
    next(stream)  # the loader's start-up is not a per-batch cost
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(stream)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert images.shape == (32, 3, 128, 128)
    return (time.perf_counter() - start) / batches


def voc_step_seconds(device: torch.device, repeats: int) -> float:
    """Median seconds of a VOC proxy training step (random batch of 32 at 128 px)."""
    torch.manual_seed(0)
    model = build_segnet("deeplabv3plus", 21, backbone="resnet50", output_stride=8, aux=True).to(
        device
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(32, 3, 128, 128, device=device)
    target = torch.randint(0, 21, (32, 128, 128), device=device)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            outputs = model(images)
        loss = sum(F.cross_entropy(v.float(), target) for v in outputs.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_voc_table(root: str, quick: bool) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import fixtures_datasets

    fixtures_datasets.make_voc_tree(Path(root), "deeplab", train=60, sbd=60, val=4)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)  # a CPU trial's one core
    batches = 2 if quick else 5
    step = voc_step_seconds(device, 1 if quick else 3)
    print(f"VOC proxy step (DeepLabV3+ R50, batch 32, 128 px) on {device}: {step:.3f} s\n")
    print("| data path | s / batch | wait share of a step | target |")
    print("|---|---:|---:|---|")
    for name, cached in (("(a) files, per sample", False), ("(b) cache + batch-wise", True)):
        seconds = voc_batch_seconds(root, cached, device, batches)
        share = seconds / (seconds + step)
        met = "yes" if share < 0.05 else "NO"
        print(f"| {name} | {seconds:.3f} | {100 * share:.1f} % | < 5 %: {met} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, 20 steps (smoke run)")
    parser.add_argument("--root", default=None, help="data root for shapes (default: a temp dir)")
    parser.add_argument("--no-voc", action="store_true", help="skip part 3 (the VOC proxy data)")
    args = parser.parse_args()
    repeats, iterations = (3, 20) if args.quick else (10, 100)

    print(f"torch {torch.__version__}, float32 CPU, SGD momentum 0.9, cross-entropy")
    print(f"step time: median of {repeats} steps after 3 warm-up steps\n")
    print("### Train-step time (forward + backward + SGD step)\n")
    print_step_table(repeats)
    print()
    print(
        f"### Data wait: shapes {PROXY['image']} px, random {PROXY['crop']} px crops, "
        f"batch {PROXY['batch']}, data.train_loader (workers=0), lite\n"
    )
    if args.root:
        print_wait_table(args.root, iterations)
    else:
        with tempfile.TemporaryDirectory() as root:
            print_wait_table(root, iterations)
    if not args.no_voc:
        print("\n### VOC proxy data: files per sample vs the cache and batch-wise steps\n")
        with tempfile.TemporaryDirectory() as root:
            print_voc_table(root, args.quick)


if __name__ == "__main__":
    main()
