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

The CPU is shared and timings are noisy: compare rows within one run, not across runs.

Run: PYTHONPATH=. .venv/bin/python bench/train_step.py [--quick] [--root DIR]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, 20 steps (smoke run)")
    parser.add_argument("--root", default=None, help="data root for shapes (default: a temp dir)")
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


if __name__ == "__main__":
    main()
