"""GPU readiness: how fast the VOC proxy search and the VOC retrain run on this machine.

On a generated VOC-format tree (500 x 375 JPEGs, palette PNG labels 0..20 and 255 void; 300
train + 30 val images) or the tree at --root, it measures:
  proxy alone     the VOC proxy (DeepLabV3+ R50, OS 8, aux, 128 px crops, batch 32, random init)
                  in this process: it/s and data-wait share over 40 iterations after 10 warm-up
                  ones, peak CUDA memory, GPU utilisation (nvidia-smi every 0.2 s)
  4 packed        the real `./launch.sh search miou 1` (1 step x 4 samples, 4 models per GPU):
                  each trial's it/s (its first iteration, with cuDNN's autotuning and the
                  loss kernels' tracing, left out), data wait and peak memory from trials.csv;
                  utilisation from the first busy sample to the first finished trial
  retrain step    DeepLabV3+ R101, OS 8, aux, 512 px crops, batch 8, bf16 autocast, on-device
                  batches: it/s over 10 iterations after 3 warm-up ones, peak memory
  2-process nccl  (>= 2 GPUs) 3 retrain steps on 2 processes (SyncBN, a global batch of 16 dealt
                  by rank stride, the surrogate per group of 8): losses equal to 1 process's
Targets: 4 packed >= 2.5x the throughput of one alone, GPU utilisation >= 80 % while they run,
data wait < 5 %. A missed target exits 0 (a measurement); a crash or a failed search does not.

Run: ./launch.sh bench gpu [--root DIR] [--images N] [--iterations N] [--cpu-dry-run] [key=value]
  key=value      search overrides for the proxy, alone and packed (e.g. proxy.fit.workers=4)
  --cpu-dry-run  all but nvidia-smi and nccl, on CPU at toy sizes (lite width 8, 32 px crops,
                 batch 4, 2 iterations, 12 images, 2 CPU slots): checks the logic anywhere
Without a CUDA GPU (and without --cpu-dry-run) it prints one line and exits 0.
"""

import argparse
import contextlib
import gc
import itertools
import math
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data  # noqa: F401  (first: the torchvision compatibility import)
from experiments.config import build_train_set, parse_overrides
from results.files import read_csv
from retrain.config import find_file
from retrain.config import resolve as resolve_retrain
from search.config import resolve as resolve_search
from search.space import initial_raw
from search.trial import SPEED_COLUMNS, build_loss
from segnets import build_segnet, engine
from surrogates import SurrogateLoss

REPO = Path(__file__).resolve().parent.parent
NUM_CLASSES = 21
PACKED = {
    "ppo.steps": "1", "ppo.samples": "4", "search.models_per_gpu": "4",
    "search.confirm_top_k": "0", "search.confirm_seeds": "1", "ray.dashboard": "false",
}  # fmt: skip
LITE = "{width: 8, aux: true}"
DRY_PROXY = {
    "proxy.model": "lite", "proxy.model_args": LITE, "proxy.crop_size": "32",
    "proxy.scale": "[128, 32]", "proxy.eval_scale": "[128, 32]", "proxy.eval_crop": "32",
    "proxy.eval_batch_size": "4", "proxy.fit.batch_size": "4",
}  # fmt: skip
DRY_RETRAIN = {"retrain.model": "lite", "retrain.model_args": LITE, "retrain.crop_size": "32"}
DDP_BATCH, DDP_STEPS = 16, 3
DDP_RTOL = 1e-2  # bf16 (torch.testing allows 1.6e-2)


def write_sample(voc: Path, image_id: str, seed: int) -> None:
    """A VOC-sized JPEG (375 x 500, a quarter portrait) and its palette PNG label: a noisy
    gradient with 1-4 ellipses of classes 1..20, each ringed by void (255) as VOC's are."""
    rng = np.random.default_rng(seed)
    h, w = (375, 500) if rng.random() < 0.75 else (500, 375)
    yy, xx = np.ogrid[:h, :w]
    top, bottom = rng.uniform(30, 220, (2, 3))
    # the noise makes ~70 kB JPEGs that decode in VOC's ~3 ms: the data pipeline's real cost
    image = top + (bottom - top) * (yy / h)[..., None] + rng.normal(0, 12, (h, w, 3))
    label = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 5)):
        cy, ry = rng.uniform(0.2, 0.8) * h, rng.uniform(0.08, 0.3) * h
        cx, rx = rng.uniform(0.2, 0.8) * w, rng.uniform(0.08, 0.3) * w
        distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        label[distance <= 1.1] = 255
        label[distance <= 1] = rng.integers(1, NUM_CLASSES)
        image[distance <= 1] += rng.uniform(-80, 80, 3)
    image = PIL.Image.fromarray(image.clip(0, 255).astype(np.uint8))
    image.save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
    png = PIL.Image.fromarray(label)
    png.putpalette([v for i in range(256) for v in (i, i, i)])  # "P"; readers use the indices
    png.save(voc / "SegmentationClass" / f"{image_id}.png")


def make_voc(root: Path, images: int) -> None:
    """root/VOCdevkit/VOC2012 with `images` train ids and a tenth as many val ids (no SBD)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    train = [f"2007_{n:06d}" for n in range(images)]
    val = [f"2008_{n:06d}" for n in range(max(1, images // 10))]
    # fork: the workers need only numpy and PIL, and no CUDA context exists yet
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.starmap(write_sample, [(voc, i, n) for n, i in enumerate(train + val)])
    for split, ids in (("train", train), ("val", val)):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


@contextlib.contextmanager
def gpu_utilisation(enabled: bool):
    """Yields a list that fills with (monotonic time, utilisation %) of torch's cuda:0 every
    0.2 s while the block runs (nvidia-smi's own loop); it stays empty when disabled."""
    samples: list[tuple[float, float]] = []
    if not enabled or not shutil.which("nvidia-smi"):
        yield samples
        return
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]  # nvidia-smi ignores it
    query = ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--loop-ms=200"]
    smi = subprocess.Popen(["nvidia-smi", f"--id={gpu}", *query], stdout=subprocess.PIPE, text=True)

    def read() -> None:
        for line in smi.stdout:
            if line.strip().isdigit():
                samples.append((time.monotonic(), float(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield samples
    finally:
        smi.terminate()
        smi.wait()
        reader.join()


def mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def timed_steps(model, loss_fn, batches, cfg, device: torch.device, warmup: int) -> dict:
    """it/s and data-wait share of steps [warmup, cfg.iterations), after the warm-up steps
    (cuDNN autotuning, compiling the fused loss kernels); peak memory over all of them."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    net, optimizer = engine.setup_training(model, cfg, device)
    loss_fn.to(device)
    engine.train_steps(net, optimizer, loss_fn, batches, cfg, device, 0, warmup)
    with gpu_utilisation(cuda) as samples:
        start = time.perf_counter()
        stop = cfg.iterations
        stats = engine.train_steps(net, optimizer, loss_fn, batches, cfg, device, warmup, stop)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {
        "it_per_s": (stop - warmup) / seconds,
        "data_wait": getattr(stats, "data_seconds", math.nan) / seconds,  # NaN if no TrainStats
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan,
        "util": mean(u for _, u in samples),
    }


def proxy_alone(cfg, device: torch.device, warmup: int, timed: int) -> dict:
    """One proxy training in this process, built as a search trial builds it, with the CPU
    share one of the 4 packed trials gets (search.searcher.trial_resources), so that the
    throughput ratio measures the GPU's sharing, not more cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(PACKED["search.models_per_gpu"])))
    try:
        return _proxy_alone(cfg, device, warmup, timed)
    finally:
        torch.set_num_threads(threads)


def _proxy_alone(cfg, device: torch.device, warmup: int, timed: int) -> dict:
    train_set = build_train_set(cfg.data, cfg.proxy, without_holdout=True)
    loss_fn = build_loss(
        cfg, initial_raw(cfg.search.metric, cfg.search.ce_mix), train_set.num_classes
    )
    engine.seed_everything(0)
    model = build_segnet(cfg.proxy.model, train_set.num_classes, **cfg.proxy.model_args)
    fit_cfg = replace(cfg.proxy.fit, iterations=warmup + timed, quiet=True)
    batches = engine.train_batches(train_set, fit_cfg, device)
    return timed_steps(model, loss_fn, batches, fit_cfg, device, warmup)


def proxy_packed(overrides: dict, dry: bool, results: Path) -> dict:
    """4 proxy trials at once through the real search command; their speeds from trials.csv."""
    gpus = ["search.cpu_slots=2"] if dry else ["1"]
    words = [f"{k}={v}" for k, v in (overrides | PACKED).items()]
    command = [str(REPO / "launch.sh"), "search", "miou", *gpus, *words, f"--results={results}"]
    print("$ " + " ".join(command[1:]), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines as they happen: they mark the window
    trials_start, first_done, log = 0.0, None, []
    with gpu_utilisation(not dry) as samples:
        search = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for line in search.stdout:
            log.append(line)
            if not trials_start and "models per GPU" in line:  # the Tuner starts the trials
                trials_start = time.monotonic()
            if first_done is None and " | trials " in line:
                first_done = time.monotonic()  # a trial has finished: the 4 no longer all run
        returncode = search.wait()
    if returncode:
        print(f"the search failed (exit {returncode}):\n{''.join(log[-40:])}", file=sys.stderr)
    # the window: from the trials' first GPU work (the driver's kernel compile and Ray's
    # start-up come before) until the first finished trial
    busy = [t for t, u in samples if u > 0 and t >= trials_start]
    end = first_done or math.inf
    util = mean(u for t, u in samples if busy and busy[0] <= t <= end)
    rows = [r for path in results.glob("*/trials.csv") for r in read_csv(path)]
    trials = [r for r in rows if r.get("phase") == "search"]
    speeds = {k: [float(r.get(k) or "nan") for r in trials] for k in SPEED_COLUMNS}
    return speeds | {"util": util, "returncode": returncode}


def random_batches(batch: int, crop: int, device: torch.device, rank: int = 0, world: int = 1):
    """The same global batch at every step, made on the device (the data pipeline is not what
    is measured): blobs of random classes (a 4 x 4 grid upsampled) seen through noise. Dealt
    by rank stride as data.train_loader does: process `rank` gets every world-th image."""
    generator = torch.Generator(device).manual_seed(0)
    grid = torch.randint(0, NUM_CLASSES, (batch, 1, 4, 4), generator=generator, device=device)
    target = F.interpolate(grid.float(), size=(crop, crop), mode="nearest")[:, 0].long()
    noise = torch.randn(batch, 3, crop, crop, generator=generator, device=device)
    images = noise + (target[:, None] / 10 - 1)
    return itertools.repeat((images[rank::world], target[rank::world]))


def retrain_step(settings, device: torch.device, batch: int, warmup: int, timed: int) -> dict:
    engine.seed_everything(0)
    model = build_segnet(settings.model, NUM_CLASSES, **settings.model_args)
    fit_cfg = replace(settings.fit, batch_size=batch, iterations=warmup + timed, quiet=True)
    # pooled over the batch of 8: the reference's loss group of one GPU
    loss_fn = SurrogateLoss("miou", "identity", NUM_CLASSES)
    batches = random_batches(batch, settings.crop_size, device)
    return timed_steps(model, loss_fn, batches, fit_cfg, device, warmup)


def retrain_losses(rank: int, world: int, port: int, settings, out: Path | None = None):
    """Per-step losses (main + aux_weight * aux, averaged over the processes) of DDP_STEPS
    retrain steps on process `rank` of `world` (nccl); rank 0 of several saves them to `out`."""
    if world > 1:
        torch.cuda.set_device(rank)
        address = f"tcp://127.0.0.1:{port}"
        dist.init_process_group("nccl", init_method=address, rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    engine.seed_everything(0)  # the same initial weights (DDP broadcasts rank 0's anyway)
    model = build_segnet(settings.model, NUM_CLASSES, **settings.model_args)
    fit = dict(batch_size=DDP_BATCH, iterations=DDP_STEPS, sync_bn=True, quiet=True)
    cfg = replace(settings.fit, **fit)
    net, optimizer = engine.setup_training(model, cfg, device)
    group = settings.loss_group_size  # 8 in the VOC profile: the reference's images per GPU
    surrogate = SurrogateLoss("miou", "identity", NUM_CLASSES, group_size=group).to(device)
    heads = []

    def loss_fn(logits, target):  # records each head's loss, main then aux, without a sync
        loss = surrogate(logits, target)
        heads.append(loss.detach())
        return loss

    batches = random_batches(DDP_BATCH, settings.crop_size, device, rank, world)
    engine.train_steps(net, optimizer, loss_fn, batches, cfg, device, 0, DDP_STEPS)
    per_step = torch.stack(heads).view(DDP_STEPS, -1)  # (steps, heads)
    losses = per_step[:, 0] + cfg.aux_weight * per_step[:, 1:].sum(1)
    if world > 1:
        dist.all_reduce(losses)
        losses /= world
        if rank == 0:
            torch.save(losses.cpu(), out)
        del net  # DDP's reducer holds the group: freed after it, exit can deadlock (retrain)
        dist.destroy_process_group()
    return losses.cpu()


def ddp_row(settings, gpus: int, dry: bool, tmp: Path) -> tuple:
    """(value, target, met): the largest relative difference of the 2-process losses."""
    if dry or gpus < 2:
        return ("skipped: CPU dry run" if dry else "skipped: 1 GPU", "", "")
    single = retrain_losses(0, 1, 0, settings)
    gc.collect()
    torch.cuda.empty_cache()  # rank 0 of the two needs cuda:0's memory
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, settings, tmp / "ddp.pt")
    torch.multiprocessing.spawn(retrain_losses, args=args, nprocs=2)
    diff = float(((torch.load(tmp / "ddp.pt") - single).abs() / single.abs()).max())
    return (f"max rel. diff {diff:.1e}", f"<= {DDP_RTOL:g}", verdict(diff, diff <= DDP_RTOL))


def verdict(value: float, met: bool) -> str:
    return "n/a" if math.isnan(value) else ("yes" if met else "NO")


def table(alone: dict, packed: dict, retrain: dict, ddp: tuple) -> list[tuple]:
    """(measurement, value, target, met) rows."""
    speeds, util, wait = packed["it_per_s"], packed["util"], mean(packed["data_wait"])
    total = math.fsum(speeds) if speeds else math.nan
    ratio, each = total / alone["it_per_s"], ", ".join(f"{v:.2f}" for v in speeds)
    alone_wait = alone["data_wait"]
    return [
        ("proxy alone: iterations/s", f"{alone['it_per_s']:.2f}", "", ""),
        ("proxy alone: data wait", f"{100 * alone_wait:.1f} %", "< 5 %",
         verdict(alone_wait, alone_wait < 0.05)),
        ("proxy alone: peak memory", f"{alone['peak_gb']:.2f} GiB", "", ""),
        ("proxy alone: GPU utilisation", f"{alone['util']:.0f} %", "", ""),
        ("4 packed: iterations/s per model", f"{mean(speeds):.2f} ({each})", "", ""),
        ("4 packed: iterations/s total", f"{total:.2f}", "", ""),
        ("4 packed / alone: throughput", f"{ratio:.2f}x", ">= 2.5x", verdict(ratio, ratio >= 2.5)),
        ("4 packed: GPU utilisation", f"{util:.0f} %", ">= 80 %", verdict(util, util >= 80)),
        ("4 packed: data wait (mean)", f"{100 * wait:.1f} %", "< 5 %", verdict(wait, wait < 0.05)),
        ("4 packed: peak memory (largest)",
         f"{max(filter(math.isfinite, packed['peak_gb']), default=math.nan):.2f} GiB", "", ""),
        ("retrain step: iterations/s", f"{retrain['it_per_s']:.2f}", "", ""),
        ("retrain step: peak memory", f"{retrain['peak_gb']:.2f} GiB", "", ""),
        ("2-process nccl retrain: loss vs 1 process", *ddp),
    ]  # fmt: skip


def configs(root: Path, dry: bool, iterations: int, extra: list[str]) -> tuple:
    """(search overrides for the proxy, the search config, the retrain settings); a bad key
    is an error here, before anything runs."""
    dataset = {"data": "voc", "data.root": str(root)}
    # the GPU machines have no internet: no ImageNet weights
    proxy = DRY_PROXY if dry else {"proxy.model_args.pretrained_backbone": "none"}
    retrain = dataset | (DRY_RETRAIN if dry else {"retrain.model_args.pretrained_backbone": "none"})
    budget = {"proxy.fit.iterations": str(iterations), "search.rungs": "1"}  # full-budget trials
    overrides = dataset | budget | proxy | parse_overrides(extra)
    settings = resolve_retrain(find_file("miou_bezier"), retrain).retrain
    return overrides, resolve_search("miou", overrides), settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="an existing VOC tree (default: generate one in a temp dir)")
    parser.add_argument("--images", type=int, default=300, help="train images to generate")
    parser.add_argument("--iterations", type=int, default=100, help="of each packed trial")
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy sizes on CPU, no nccl")
    parser.add_argument("overrides", nargs="*", help="search key=value for the proxy")
    args = parser.parse_args()
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("bench gpu: no CUDA GPU visible; nothing to measure (run it on a GPU machine)")
        return 0
    started = time.perf_counter()
    device = torch.device("cpu" if dry else "cuda")
    gpus = 0 if dry else torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.root).resolve() if args.root else tmp / "data"
        if not (root / "VOCdevkit").is_dir():
            make_voc(root, 12 if dry else args.images)
        iterations = 2 if dry else args.iterations
        overrides, cfg, settings = configs(root, dry, iterations, args.overrides)
        name = "CPU dry run" if dry else f"{gpus} x {torch.cuda.get_device_name()}"
        fit = cfg.proxy.fit
        print(f"torch {torch.__version__}, {name}; data {root}")
        print(
            f"proxy: {cfg.proxy.model} {cfg.proxy.model_args}, {cfg.proxy.crop_size} px crops, "
            f"batch {fit.batch_size}"
        )
        print(f"retrain: {settings.model} {settings.model_args}, {settings.crop_size} px crops")

        alone = proxy_alone(cfg, device, *((1, 2) if dry else (10, 40)))
        gc.collect()  # the alone run's memory back to the driver: the 4 trials need it
        if not dry:
            torch.cuda.empty_cache()
        packed = proxy_packed(overrides, dry, tmp / "results")
        retrain = retrain_step(settings, device, *((4, 1, 2) if dry else (8, 3, 10)))
        ddp = ddp_row(settings, gpus, dry, tmp)

    print("\n| measurement | value | target | met |\n|---|---:|---|---|")
    for row in table(alone, packed, retrain, ddp):
        print("| " + " | ".join(row) + " |")
    print(f"\nwall time: {time.perf_counter() - started:.0f} s (target < 300 s)")
    return 1 if packed["returncode"] else 0


if __name__ == "__main__":
    sys.exit(main())
