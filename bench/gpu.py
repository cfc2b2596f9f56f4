"""GPU check: the real search and retrain paths on this machine, and how fast the VOC proxy runs.

`./launch.sh bench gpu` is the first command to run on a GPU machine: at most ~8 minutes on one
H200-class GPU, one Markdown table. On a generated VOC-format tree (VOC-sized JPEGs and palette
labels; 1,464 train images by default, VOC 2012's train.txt, so that the reward holdout, every
10th, has VOC's 146 images and evaluates in VOC's time) or the tree at --root:

  proxy alone     the VOC proxy (DeepLabV3+ R50 OS 8 + aux, 128 px crops, batch 32, random init:
                  GPU machines are offline), built as search/trial.train_and_score builds it,
                  in a process of its own: 300 timed iterations after 20 warm-up ones; it/s,
                  images/s, data wait, peak memory, GPU utilisation (nvidia-smi)
  N packed        N = 1, 2, 4, 8 such processes on the GPU, started together (a barrier after
                  their warm-up), each with the CPU share a search trial gets (usable cores / N):
                  images/s over the window where all of them run, [latest first timed
                  iteration, earliest last one], from a CUDA event recorded at every iteration
                  (GPU-side times; a host sync every SYNC_EVERY iterations, the loss read that
                  ends each engine.train_steps call); ratio to alone, peak memory
  search          the real `./launch.sh search miou 1` twice, tiny (40 iterations, 4 samples
                  at 4 models per GPU): successive halving forced on over 2 steps
                  (search.rungs=3, reduction 2: rungs of 10, 20, 40 iterations, each later rung
                  resuming the state the earlier one saved, on CUDA; the second step starts its
                  trial actors again) and off over one (search.rungs=1). Per step:
                  start-up (the step's wall time minus, for each rung, its longest trial's
                  own seconds: what runs outside the trials, Ray and the actors' imports), the
                  trials' mean setup_s, train_s, state_s, eval_s (trials.csv), and the
                  overhead (wall minus each rung's longest train_s) against the training time
                  of a 1000-iteration VOC proxy at the packed rate measured above (the issue's
                  target: <= 10 %)
  processes       on the machine (/proc) before each search and at most during its first wave
  retrain resume  the real `./launch.sh retrain miou_bezier.yaml` (R101, tiny): one run killed
                  (SIGKILL of its process group) after its first checkpoint and continued with
                  --resume, against an uninterrupted run (a second one gives CUDA's own
                  run-to-run difference); the largest difference of the six final metrics
  distance maps   the distance-map losses' transform where it runs (surrogates/distance.py:
                  torch on a GPU, scipy on a CPU) against scipy's on the host, on the worst-case
                  VOC-like batch of bench/losses.py; a hausdorff step (main and aux heads)
                  against CE's there, as a share of the proxy's step (target < 10 %)
  nccl            (>= 2 GPUs) `./launch.sh retrain ... 2` with a loss group of 8 over 2
                  processes of 4 images, and the first step of retrain's model, loss and
                  engine.setup_training (SyncBN, DDP) on 2 processes against 1: the surrogate
                  value S and the gradients, dropout off, float32 without TF32 (NCCL_RTOL)

Run: ./launch.sh bench gpu [--root DIR] [--images N] [--cpu-dry-run] [key=value ...]
  key=value      search overrides for the proxy (packed and searches), e.g. proxy.fit.workers=4
  --cpu-dry-run  all but nvidia-smi and nccl, on CPU at toy sizes (the lite model, 32 px crops,
                 batch 4; 2 CPU slots; the DDP comparison on gloo with BatchNorm frozen, as
                 SyncBN has no CPU kernels): checks the logic anywhere in a few minutes
Without a CUDA GPU (and without --cpu-dry-run) it prints one line and exits 0. It exits 1 when
a real command or a part crashed (the table says which); a missed target is a measurement.
"""

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import data  # noqa: F401  (first: the torchvision compatibility import)
import surrogates
from experiments.config import build_train_set, parse_overrides
from results.files import read_csv
from retrain.config import find_file
from retrain.config import resolve as resolve_retrain
from retrain.train import make_loss
from search.config import resolve as resolve_search
from search.space import initial_raw
from search.trial import build_loss, warm_up_kernels
from segnets import build_segnet, engine
from surrogates import METRICS
from surrogates.distance import distance_to, torch_distance_to

REPO = Path(__file__).resolve().parent.parent
NUM_CLASSES = 21
LITE = "{width: 8, aux: true}"
DRY_PROXY = {
    "proxy.model": "lite", "proxy.model_args": LITE, "proxy.crop_size": "32",
    "proxy.scale": "[128, 32]", "proxy.eval_scale": "[128, 32]", "proxy.eval_crop": "32",
    "proxy.eval_batch_size": "4", "proxy.fit.batch_size": "4",
}  # fmt: skip
DRY_RETRAIN = {
    "retrain.model": "lite", "retrain.model_args": LITE, "retrain.scale": "[128, 32]",
    "retrain.eval_scale": "[128, 32]",
}  # fmt: skip
OFFLINE = "none"  # pretrained_backbone: the GPU machines reach no download server
SYNC_EVERY = 10  # iterations per engine.train_steps call: each ends with a host sync
PROXY_BUDGET = 1000  # the VOC profile's proxy iterations, what the overhead is compared with
OVERHEAD_TARGET = 0.10  # start-up + evaluation + state saving per step, share of training
DISTANCE_ATOL = 1e-4  # exact transforms: float32 rounding of distances up to ~180 px
DISTANCE_TARGET = 0.10  # a distance-map loss's extra work, share of a proxy step
NCCL_RTOL = 1e-3  # float32 without TF32: the processes differ only in summation order (~1e-6)


@dataclass(frozen=True)
class Sizes:
    images: int  # generated train images (a tenth as many val)
    warmup: int  # iterations before any timing: cuDNN autotuning, kernel tracing, loader start
    timed: int  # timed iterations of the proxy alone
    packed: tuple[int, ...]  # models per GPU swept; the first must be 1 (the proxy alone)
    seconds: float  # timed seconds of each packed round after the first
    search_iterations: int  # the searches' proxy budget: rungs of 1/4, 1/2 and all of it
    samples: int  # per step, all running at once (<= models per GPU, or CPU slots)
    steps: int
    retrain_iterations: int
    checkpoint_every: int
    retrain_crop: int


GPU = Sizes(1464, 20, 300, (1, 2, 4, 8), 10.0, 40, 4, 2, 12, 4, 256)
DRY = Sizes(12, 2, 6, (1, 2), 2.0, 4, 2, 1, 6, 2, 32)


# --- the dataset ---------------------------------------------------------------------------------


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
    with multiprocessing.get_context("fork").Pool(engine.usable_cpus()) as pool:
        pool.starmap(write_sample, [(voc, i, n) for n, i in enumerate(train + val)])
    for split, ids in (("train", train), ("val", val)):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


# --- what the machine does meanwhile ------------------------------------------------------------


@contextlib.contextmanager
def gpu_utilisation(enabled: bool):
    """Yields a list that fills with (time.monotonic(), utilisation %) of torch's cuda:0 every
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


def process_count() -> int:
    return sum(name.isdigit() for name in os.listdir("/proc"))


def settled_process_count() -> int:
    """The processes on the machine once their number holds still for half a second (the Ray
    processes of a command that just ended take a moment to go), at most 10 s."""
    count = process_count()
    for _ in range(20):
        time.sleep(0.5)
        count, previous = process_count(), count
        if count == previous:
            break
    return count


@contextlib.contextmanager
def process_counts():
    """Yields a list that fills with (time.monotonic(), processes on the machine) every 0.2 s."""
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.wait(0.2):
            samples.append((time.monotonic(), process_count()))

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    try:
        yield samples
    finally:
        stop.set()
        counter.join()


def mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def most(values) -> float:
    """The largest value that is not NaN (a failed trial has no train_s); NaN if none."""
    return max((v for v in values if not math.isnan(v)), default=math.nan)


@contextlib.contextmanager
def environment(**values: str):
    """os.environ with `values` while the block runs (what a child process started in it gets)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


# --- the proxy alone and packed -----------------------------------------------------------------


def record(stamps: list, device: torch.device) -> None:
    """Append where the device's work stands now: on CUDA an event that completes when the work
    queued before it does (no wait), on a CPU the clock itself."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        stamps.append(event)
    else:
        stamps.append(time.monotonic())


def stamped(batches, stamps: list, device: torch.device):
    """The batch stream, a stamp recorded as each iteration asks for its batch."""
    while True:
        record(stamps, device)
        yield next(batches)


def seconds_of(stamps: list, t0: float, device: torch.device) -> list[float]:
    """Stamps as time.monotonic() seconds, one clock for all processes: stamps[0] was recorded
    on an idle device right after t0 was read, each CUDA event is timed from it."""
    if device.type != "cuda":
        return stamps
    torch.cuda.synchronize()
    return [t0 + stamps[0].elapsed_time(event) / 1000 for event in stamps]


def train_round(trainer: tuple, start: int, warm_until: int, models: int, barrier, sizes) -> dict:
    """One round of the sweep in one process: train from iteration `start` to `warm_until`
    (warm-up), wait for the others at `barrier`, then train `sizes.timed` iterations (the proxy
    alone) or `sizes.seconds` (packed). Peak memory counts the warm-up's (cuDNN's autotuning)."""
    net, optimizer, loss_fn, train_set, fit_cfg, device = trainer
    cuda = device.type == "cuda"
    # on a GPU the CPU share of one of `models` trials (search.searcher.trial_resources): its
    # threads and loader workers (engine.loader_workers); on a CPU one thread, as a CPU
    # search's trials (more would only fight over the cores)
    torch.set_num_threads(max(1, engine.usable_cpus() // models) if cuda else 1)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stamps = []
    batches = stamped(engine.train_batches(train_set, fit_cfg, device, start), stamps, device)
    engine.train_steps(net, optimizer, loss_fn, batches, fit_cfg, device, start, warm_until)
    if cuda:
        torch.cuda.synchronize()
    barrier.wait(timeout=600)
    stamps.clear()
    t0 = time.monotonic()
    record(stamps, device)  # the reference the CUDA events are timed from
    iteration, waited, trained = warm_until, 0.0, 0.0
    # the proxy alone: sizes.timed iterations; packed: sizes.seconds
    last = warm_until + sizes.timed if models == 1 else math.inf
    deadline = math.inf if models == 1 else t0 + sizes.seconds
    while iteration < last and time.monotonic() < deadline:
        stop = iteration + SYNC_EVERY
        stats = engine.train_steps(
            net, optimizer, loss_fn, batches, fit_cfg, device, iteration, stop
        )
        iteration, waited, trained = stop, waited + stats.data_seconds, trained + stats.seconds
    record(stamps, device)  # the end of the last iteration
    batches.close()
    return {
        "models": models,
        "iteration": iteration,
        "stamps": seconds_of(stamps, t0, device)[1:],  # each iteration's start, then the end
        "data_wait": waited / trained,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan,
    }


def packed_worker(rank: int, cfg, sizes: Sizes, device: str, barriers, everyone, results):
    """One proxy training process of the sweep, built as search/trial.train_and_score builds
    one: it takes part in every round of more than `rank` models and sends each round's
    stamps to `results` (or its traceback)."""
    try:
        device = torch.device(device)
        train_set = build_train_set(cfg.data, cfg.proxy, without_holdout=True)
        raw = initial_raw(cfg.search.metric, cfg.search.ce_mix)
        loss_fn = build_loss(cfg, raw, train_set.num_classes)
        engine.seed_everything(cfg.search.seed)
        model = build_segnet(cfg.proxy.model, train_set.num_classes, **cfg.proxy.model_args)
        # a schedule far longer than the sweep: the poly decay stays defined, the speed is the same
        fit_cfg = replace(cfg.proxy.fit, iterations=10**7, quiet=True, seed=rank)
        net, optimizer = engine.setup_training(model, fit_cfg, device)
        trainer, iteration = (net, optimizer, loss_fn, train_set, fit_cfg, device), 0
        everyone.wait(timeout=600)  # all built: the imports and builds of the others are over
        for models, barrier in zip(sizes.packed, barriers, strict=True):
            if rank < models:
                # a process's first round autotunes and traces (later ones only start their
                # loaders), beside the others of its round: trials start together too
                warm_until = iteration + (sizes.warmup if iteration == 0 else 3)
                run = train_round(trainer, iteration, warm_until, models, barrier, sizes)
                results.put(run)
                iteration = run["iteration"]
            everyone.wait(timeout=600)
    except BaseException:  # noqa: BLE001 - the parent reports it in the table, the others stop
        results.put({"error": f"rank {rank}: {traceback.format_exc(limit=-4).strip()}"})
        raise


def collect(results, workers, expected: int, barriers) -> tuple[list[dict], str]:
    """The rounds' results as they come, until `expected`; a worker's error or death aborts
    the barriers (the others raise there and stop) and comes back as the second item."""
    runs = []
    while len(runs) < expected:
        try:
            item = results.get(timeout=2)
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead:
                item = {"error": f"a packed process died (exit {dead[0]})"}
            elif all(w.exitcode is not None for w in workers):
                item = {"error": "the packed processes ended before their last round"}
            else:
                continue
        if "error" in item:
            for barrier in barriers:
                barrier.abort()
            return runs, item["error"]
        runs.append(item)
    return runs, ""


def window(runs: list[dict], batch: int, utilisation: list) -> dict:
    """Throughput of processes running at once, over [latest first timed iteration, earliest
    last one]: each process's iterations done in it, interpolated between its stamps."""
    start = max(r["stamps"][0] for r in runs)
    end = min(r["stamps"][-1] for r in runs)
    if end <= start:
        return {"error": "the processes never all ran at once"}
    done = 0.0
    for r in runs:
        count = np.arange(len(r["stamps"]))  # iterations done at each stamp
        done += np.interp(end, r["stamps"], count) - np.interp(start, r["stamps"], count)
    it_per_s = done / (end - start)
    return {
        "models": len(runs),
        "it_per_s": it_per_s,
        "per_model": it_per_s / len(runs),
        "images_per_s": it_per_s * batch,
        "seconds": end - start,
        "data_wait": mean(r["data_wait"] for r in runs),
        "peak_gb": max(r["peak_gb"] for r in runs),
        "total_gb": sum(r["peak_gb"] for r in runs),
        "util": mean(u for t, u in utilisation if start <= t <= end),
    }


def packed_sweep(cfg, sizes: Sizes, device: torch.device) -> dict:
    """{models: window(...)} of the sweep, or {"error": ...}."""
    context = multiprocessing.get_context("spawn")  # CUDA in the children
    most = max(sizes.packed)
    barriers = [context.Barrier(n) for n in sizes.packed]
    everyone, results = context.Barrier(most), context.Queue()
    args = (cfg, sizes, device.type, barriers, everyone, results)
    workers = [context.Process(target=packed_worker, args=(r, *args)) for r in range(most)]
    with gpu_utilisation(device.type == "cuda") as utilisation:
        # as in a search's trials (search.searcher.TRIAL_ENV): the kernels are in inductor's
        # cache, a pool of compile workers in every process would only idle
        with environment(TORCHINDUCTOR_COMPILE_THREADS="1"):
            for worker in workers:
                worker.start()
        runs, error = collect(results, workers, sum(sizes.packed), [*barriers, everyone])
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    if error:
        return {"error": error}
    batch = cfg.proxy.fit.batch_size
    by_models = {n: [r for r in runs if r["models"] == n] for n in sizes.packed}
    return {n: window(rs, batch, utilisation) for n, rs in by_models.items()}


# --- the real commands --------------------------------------------------------------------------


def launch(words: list[str], log: Path, **popen) -> subprocess.Popen:
    """`./launch.sh WORDS` with its output in `log` (unbuffered: lines as they happen)."""
    command = [str(REPO / "launch.sh"), *words]
    print("$ ./launch.sh " + " ".join(words), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:  # the child writes to its own copy of the descriptor
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, **popen)


def failure(log: Path, returncode: int) -> str:
    """A failed command's exit code and its last line that says error (else its last line)."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return f"exit {returncode}: {(errors or lines or ['no output'])[-1][:200]}"


def search_run(words: list[str], results: Path, log: Path) -> dict:
    """A real `./launch.sh search` with its output lines timed as they come (they mark when the
    trials start and when each step closes) and the machine's processes counted meanwhile."""
    before = settled_process_count()
    started = time.monotonic()
    with process_counts() as counts:
        search = subprocess.Popen(
            [str(REPO / "launch.sh"), "search", *words, f"--results={results}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        print(f"$ ./launch.sh search {' '.join(words)}", flush=True)
        lines = [(time.monotonic(), line.rstrip()) for line in search.stdout]
        returncode = search.wait()
    log.write_text("\n".join(line for _, line in lines) + "\n")
    run_dirs = list(results.iterdir()) if results.is_dir() else []
    run = {"returncode": returncode, "lines": lines, "before": before, "counts": counts}
    run |= {"run_dir": run_dirs[0] if run_dirs else None, "seconds": time.monotonic() - started}
    if returncode:
        run["error"] = failure(log, returncode)
    return run


PROGRESS = re.compile(r"\[search\] (?:step (\d+)/\d+|confirm|done|failed)\b.* \| trials ")


def search_steps(run: dict) -> list[dict]:
    """Per step: wall time (from the trials' start, or the previous step's close, to the
    progress line after its last trial), start-up, overhead and the trials' mean seconds."""
    start, closes = trials_start(run["lines"]), step_closes(run["lines"])
    trials = [r for r in read_csv(run["run_dir"] / "trials.csv") if r["phase"] == "search"]
    steps = []
    for step in sorted({int(r["step"]) for r in trials}):
        end = next((t for t, open_step in closes if open_step > step), math.nan)
        rows = [r for r in trials if int(r["step"]) == step]
        rungs = [
            [r for r in rows if r["rung"] == rung] for rung in sorted({r["rung"] for r in rows})
        ]
        # a rung's trials run at once (samples <= slots): the longest is its critical path
        longest = sum(most(number(r["seconds"]) for r in rung) for rung in rungs)
        training = sum(most(number(r["train_s"]) for r in rung) for rung in rungs)
        wall = end - start
        step_row = {"step": step, "wall": wall, "startup": wall - longest}
        step_row |= {"overhead": wall - training, "training": training, "trials": len(rows)}
        step_row["failed"] = sum(r["status"] != "ok" for r in rows)
        for key in ("setup_s", "train_s", "state_s", "eval_s"):
            step_row[key] = mean(number(r[key]) for r in rows)
        steps.append(step_row)
        start = end
    return steps


def number(text: str) -> float:
    return float(text) if text else math.nan


def trials_start(lines: list[tuple[float, str]]) -> float:
    """When the Tuner starts the trials: once Ray is up (the halving line comes then) and the
    kernels are compiled (their line, when compiling), the later of the two."""
    marks = [t for t, line in lines if "successive halving" in line or "compiled the loss" in line]
    return max(marks, default=math.nan)


def step_closes(lines: list[tuple[float, str]]) -> list[tuple[float, float]]:
    """(time, the step open after it) of every progress line: one comes after each trial, once
    the searcher has moved on (the confirmation round, the end, a failure: infinity)."""
    found = [(t, PROGRESS.search(line)) for t, line in lines]
    return [(t, int(m[1]) if m[1] else math.inf) for t, m in found if m]


def first_wave(run: dict) -> float:
    """The most processes on the machine while the first trials ran (to the first result)."""
    start, closes = trials_start(run["lines"]), step_closes(run["lines"])
    end = closes[0][0] if closes else math.inf
    return max((n for t, n in run["counts"] if start <= t <= end), default=math.nan)


def retrain_resume(words: list[str], tmp: Path, sizes: Sizes) -> dict:
    """Two uninterrupted retrains and one killed after its first checkpoint, all at once, then
    the killed one continued with --resume; the final metrics compared."""
    every = ["retrain.fit.eval_every=0", f"retrain.fit.iterations={sizes.retrain_iterations}"]
    every.append(f"retrain.fit.checkpoint_every={sizes.checkpoint_every}")
    runs = {}
    for name in ("straight", "again", "killed"):
        results = tmp / f"retrain-{name}"
        command = ["retrain", "miou_bezier.yaml", *words, *every, f"--results={results}"]
        # its own process group: the kill takes launch.sh's python and its loader workers
        process = launch(command, tmp / f"retrain-{name}.log", start_new_session=True)
        runs[name] = (process, results)
    killed, results = runs["killed"]
    checkpoint = None
    while checkpoint is None and killed.poll() is None:
        checkpoint = next(results.glob("*/checkpoints/latest.pth"), None)
        time.sleep(0.01)
    if killed.poll() is None:
        os.killpg(killed.pid, signal.SIGKILL)
    codes = {name: process.wait() for name, (process, _) in runs.items()}
    if checkpoint is None or (checkpoint.parent.parent / "final.json").is_file():
        return {"error": f"the run ended (exit {codes['killed']}) before it could be killed"}
    run_dir = checkpoint.parent.parent
    at = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)["iteration"]
    resume = ["retrain", "--resume", str(run_dir)]
    codes["resumed"] = launch(resume, tmp / "retrain-resumed.log").wait()
    for name in ("straight", "again", "resumed"):
        if codes[name]:
            return {"error": f"retrain {name}: {failure(tmp / f'retrain-{name}.log', codes[name])}"}
    final = {n: json.loads(next(r.glob("*/final.json")).read_text()) for n, (_, r) in runs.items()}

    def largest_difference(a: dict, b: dict) -> float:
        return max(abs(float(a[metric]) - float(b[metric])) for metric in METRICS)

    straight = final["straight"]
    return {
        "killed_at": at,
        "resumed": largest_difference(final["killed"], straight),
        "again": largest_difference(final["again"], straight),
    }


def nccl_launcher(words: list[str], tmp: Path, sizes: Sizes) -> dict:
    """`./launch.sh retrain ... 2`: 2 nccl processes, a loss group of 8 over both."""
    results = tmp / "retrain-2"
    group = ["retrain.loss_group_size=8"]  # the batch of 8: 4 images per process
    every = [f"retrain.fit.iterations={sizes.checkpoint_every}", "retrain.fit.eval_every=0"]
    command = ["retrain", "miou_bezier.yaml", "2", *words, *group, *every, f"--results={results}"]
    started = time.monotonic()
    log = tmp / "retrain-2.log"
    returncode = launch(command, log).wait()
    if returncode:
        return {"error": failure(log, returncode)}
    (run_dir,) = results.iterdir()
    state = torch.load(run_dir / "checkpoints" / "latest.pth", mmap=True, weights_only=True)
    final = json.loads((run_dir / "final.json").read_text())
    return {"seconds": time.monotonic() - started, "rng_states": len(state["rng"]), **final}


# --- the DDP first step -------------------------------------------------------------------------


def comparison_batch(size: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch whose two halves by rank stride differ: process 1's images (the odd ones)
    hold classes 11-20, process 0's classes 1-10 (both some background), and are brighter.
    Loss groups formed per process would each miss half the classes, and BatchNorm per
    process would normalise each half by its own statistics: both change S and the gradients."""
    generator = torch.Generator().manual_seed(0)
    odd = (torch.arange(size) % 2).view(-1, 1, 1, 1)
    grid = torch.randint(1, 11, (size, 1, 4, 4), generator=generator) + 10 * odd
    grid = torch.where(torch.rand(grid.shape, generator=generator) < 0.3, 0, grid)
    target = F.interpolate(grid.float(), size=(crop, crop), mode="nearest")[:, 0].long()
    noise = torch.randn(size, 3, crop, crop, generator=generator)
    return noise + target[:, None] / 10 - 1 + 2 * odd, target


def step_values(net, model, loss_fn, images, target, aux_weight, split=1, bn_split=False):
    """(S of the main head, gradients) of one step. split=2: the loss of each process's images
    apart (loss groups per process); bn_split: the forward of each process's images apart
    (BatchNorm per process); both for two processes' images, in one process."""
    model.zero_grad(set_to_none=True)
    if bn_split:  # global position r + 2k is image k of process r
        halves = [net(images[r::2]) for r in range(2)]
        outputs = {k: torch.stack([h[k] for h in halves], 1).flatten(0, 1) for k in halves[0]}
    else:
        outputs = net(images)
    values = []

    def recording(logits, labels):
        values.append(loss_fn(logits, labels))
        return values[-1]

    losses = [
        engine.compute_loss({k: v[p::split] for k, v in outputs.items()}, target[p::split],
                            recording, aux_weight)
        for p in range(split)
    ]  # fmt: skip
    (sum(losses) / split).backward()
    main = values[:: len(values) // split]  # compute_loss: the main head's, then the aux's
    grads = [p.grad.detach().flatten().double().cpu() for p in model.parameters()]
    return 1 - float(torch.stack(main).detach().mean()), torch.cat(grads)


def first_step(rank: int, world: int, port: int, cfg, device_type: str, out: Path) -> None:
    """The first retrain step on process `rank` of `world` (nccl on GPUs, gloo on a CPU): the
    retrain's loss (make_loss: the group spans the processes), model and setup_training
    (SyncBN and DDP on CUDA); on one process also the two faults the check must catch."""
    cuda = device_type == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        # float32 throughout: the two paths then differ only in summation order
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if world > 1:
        address, timeout = f"tcp://127.0.0.1:{port}", timedelta(seconds=120)
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(
            backend, init_method=address, rank=rank, world_size=world, timeout=timeout
        )
    settings = cfg.retrain
    fit_cfg = replace(settings.fit, amp=False)
    engine.seed_everything(0)
    model = build_segnet(settings.model, NUM_CLASSES, **settings.model_args)
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0  # each process draws its own masks (per-rank seeds): off to compare
    net, _ = engine.setup_training(model, fit_cfg, device)
    net.train()
    if not cuda:  # no SyncBN on a CPU: per-sample BatchNorm (running statistics) instead
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    loss_fn = make_loss(cfg, NUM_CLASSES).to(device)
    images, target = comparison_batch(fit_cfg.batch_size, settings.crop_size)
    layout = engine.memory_format(fit_cfg, device)
    images = images.to(device).contiguous(memory_format=layout)
    target = target.to(device)
    share = (images[rank::world], target[rank::world])
    values = {"s": step_values(net, model, loss_fn, *share, fit_cfg.aux_weight)}
    if world == 1:
        values["groups"] = step_values(net, model, loss_fn, images, target, fit_cfg.aux_weight, 2)
        if cuda:
            args = (images, target, fit_cfg.aux_weight)
            values["bn"] = step_values(net, model, loss_fn, *args, bn_split=True)
    if rank == 0:
        torch.save(values, out)
    if world > 1:
        del net  # DDP's reducer holds the group: freed after it, exit can deadlock (retrain)
        dist.destroy_process_group()


def relative(a: tuple, b: tuple) -> tuple[float, float]:
    """(relative difference of S, of the gradient vector) of a against the reference b."""
    return abs(a[0] - b[0]) / abs(b[0]), float((a[1] - b[1]).norm() / b[1].norm())


def ddp_check(cfg, device_type: str, tmp: Path) -> dict:
    """The first step on 2 processes against 1, and the faults' sizes on the one; both runs at
    once (on CUDA the one process shares cuda:0 with rank 0 of the two)."""
    runs = {}
    for world in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = (world, port, cfg, device_type, tmp / f"first-step-{world}.pt")
        # the eager loss (the same values): compiling it for these shapes in every process
        # would cost more than the whole check; the launcher's run uses the compiled one
        with environment(SLS_COMPILE="0"):
            runs[world] = torch.multiprocessing.spawn(first_step, args, nprocs=world, join=False)
    for context in runs.values():
        while not context.join():
            pass
    single, double = (torch.load(tmp / f"first-step-{w}.pt", weights_only=True) for w in (1, 2))
    check = {"ddp": relative(double["s"], single["s"])}
    return check | {k: relative(single[k], single["s"]) for k in ("groups", "bn") if k in single}


def distance_check(device: torch.device) -> dict:
    """The torch transform on the device (what distance_to runs on a GPU) against scipy's on the
    host, and ms of a hausdorff and a CE step (forward and backward) there, median of 3 after 3
    warm-up ones."""
    from losses import voc_like_target  # bench/losses.py: 21 classes, a far corner

    target = voc_like_target(32, 128)
    target = target.masked_fill(target == 255, 0)
    masks = F.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2).bool()
    difference = (torch_distance_to(masks.to(device)).cpu() - distance_to(masks)).abs().max()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, NUM_CLASSES, 128, 128, generator=g).to(device).requires_grad_()
    target = target.to(device)
    ms = {}
    for name in ("ce", "hausdorff"):
        loss_fn, times = surrogates.build_loss(name), []
        for _ in range(6):
            synchronize(device)
            start = time.perf_counter()
            loss_fn(logits, target).backward()
            synchronize(device)
            times.append(1e3 * (time.perf_counter() - start))
        ms[name] = statistics.median(times[3:])
    return {"difference": float(difference), **ms}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the table ----------------------------------------------------------------------------------


def verdict(value: float, met: bool) -> str:
    return "n/a" if math.isnan(value) else ("yes" if met else "NO")


def shown(value: float, unit: str = "", digits: int = 2) -> str:
    """A figure with its unit; n/a where there is none (a CPU's GPU memory)."""
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}{unit}"


def failed(measurement: str, result: dict) -> tuple:
    return (measurement, f"FAILED: {result['error']}", "", "NO")


def proxy_rows(sweep: dict) -> list[tuple]:
    problem = sweep if "error" in sweep else sweep[1]  # the sweep's, or the alone round's
    if "error" in problem:
        return [failed("proxy alone and packed", problem)]
    alone, wait = sweep[1], sweep[1]["data_wait"]
    rows = [
        (f"proxy alone: iterations/s, images/s ({alone['seconds']:.1f} s)",
         f"{alone['it_per_s']:.2f}, {alone['images_per_s']:.0f}", "", ""),
        ("proxy alone: data wait", f"{100 * wait:.1f} %", "< 5 %", verdict(wait, wait < 0.05)),
        ("proxy alone: peak memory", shown(alone["peak_gb"], " GiB"), "", ""),
        ("proxy alone: GPU utilisation", shown(alone["util"], " %", 0), "", ""),
    ]  # fmt: skip
    for n, w in list(sweep.items())[1:]:
        if "error" in w:
            rows.append(failed(f"{n} packed", w))
            continue
        ratio = w["images_per_s"] / alone["images_per_s"]
        target = (">= 2.5x", verdict(ratio, ratio >= 2.5)) if n == 4 else ("", "")
        rows += [
            (f"{n} packed: images/s together ({w['seconds']:.1f} s window)",
             f"{w['images_per_s']:.0f} = {ratio:.2f}x alone ({w['per_model']:.2f} it/s each)",
             *target),
            (f"{n} packed: peak memory, each at most and together",
             f"{shown(w['peak_gb'], ' GiB')}, {shown(w['total_gb'], ' GiB', 1)}", "", ""),
            (f"{n} packed: data wait, GPU utilisation",
             f"{100 * w['data_wait']:.1f} %, {shown(w['util'], ' %', 0)}", "", ""),
        ]  # fmt: skip
    return rows


def search_rows(name: str, run: dict, rate: float, rate_note: str) -> list[tuple]:
    if not (run["run_dir"] and (run["run_dir"] / "trials.csv").is_file()):
        return [failed(f"search, {name}", run)]
    rows = []
    for s in search_steps(run):
        parts = ", ".join(f"{s[k]:.2f}" for k in ("setup_s", "train_s", "state_s", "eval_s"))
        share = s["overhead"] / (PROXY_BUDGET / rate)
        rows += [
            (f"search, {name}, step {s['step']}: start-up; trials' mean setup, train, state, eval",
             f"{s['startup']:.1f} s of {s['wall']:.1f} s; {parts} s "
             f"({s['trials']} trials, {s['failed']} failed)", "", ""),
            (f"search, {name}, step {s['step']}: overhead vs training",
             f"{s['overhead']:.1f} s vs {s['training']:.1f} s here; extrapolated: "
             f"{shown(100 * share, ' %', 0)} of a {PROXY_BUDGET}-it proxy at "
             f"{shown(rate, ' it/s')} ({rate_note})",
             f"<= {100 * OVERHEAD_TARGET:.0f} %", verdict(share, share <= OVERHEAD_TARGET)),
        ]  # fmt: skip
    before, wave = run["before"], first_wave(run)
    count = f"{before} before, {shown(wave, '', 0)} in the first wave ({wave - before:+.0f})"
    rows.append((f"search, {name}: processes on the machine", count, "", ""))
    return rows + ([failed(f"search, {name}", run)] if "error" in run else [])


def retrain_rows(resume: dict, dry: bool) -> list[tuple]:
    measurement = "retrain killed after a checkpoint, resumed: largest difference of final metrics"
    if "error" in resume:
        return [failed(measurement, resume)]
    # CUDA's atomics make two straight runs differ too: the resumed run should not differ more
    same = resume["resumed"] <= resume["again"]
    return [(
        measurement.replace("a checkpoint", f"iteration {resume['killed_at']}"),
        f"{resume['resumed']:.2g} (two uninterrupted runs: {resume['again']:.2g})",
        "<= the two uninterrupted runs'", "yes" if same else ("NO" if dry else "check"),
    )]  # fmt: skip


def distance_rows(check: dict, rate: float) -> list[tuple]:
    measurement = "distance maps, torch on the device vs scipy on the host: largest difference"
    if "error" in check:
        return [failed(measurement, check)]
    extra = 2 * (check["hausdorff"] - check["ce"]) / 1e3  # main and aux heads, seconds
    share = extra * rate  # of one proxy iteration alone
    return [
        (measurement, f"{check['difference']:.1e} px", f"<= {DISTANCE_ATOL:g}",
         verdict(check["difference"], check["difference"] <= DISTANCE_ATOL)),
        ("hausdorff step vs CE's (32 x 21 x 128 px), extra x 2 heads vs a proxy iteration alone",
         f"{check['hausdorff']:.1f} ms vs {check['ce']:.1f} ms; {shown(100 * share, ' %', 1)}",
         f"< {100 * DISTANCE_TARGET:.0f} %", verdict(share, share < DISTANCE_TARGET)),
    ]  # fmt: skip


def nccl_rows(launched: dict, check: dict, backend: str) -> list[tuple]:
    rows, first = [], f"first step on 2 {backend} processes vs 1: S, gradients (relative)"
    launcher = "./launch.sh retrain ... 2: loss group of 8 over 2 processes"
    if "skipped" in launched:
        rows.append((launcher, launched["skipped"], "", ""))
    elif "error" in launched:
        rows.append(failed(launcher, launched))
    else:
        states = launched["rng_states"]
        rows.append((launcher, f"ran in {launched['seconds']:.0f} s, {states} RNG states saved",
                     "2 states", "yes" if states == 2 else "NO"))  # fmt: skip
    if "skipped" in check:
        return [*rows, (first, check["skipped"], "", "")]
    if "error" in check:
        return [*rows, failed(first, check)]
    names = {"bn": "per-process BatchNorm", "groups": "per-process loss groups"}
    faults = "; ".join(
        f"{names[k]} {check[k][0]:.1e}, {check[k][1]:.1e}" for k in names if k in check
    )
    worst = max(check["ddp"])
    return [*rows, (first, f"{check['ddp'][0]:.1e}, {check['ddp'][1]:.1e} (faults: {faults})",
                    f"<= {NCCL_RTOL:g}", verdict(worst, worst <= NCCL_RTOL))]  # fmt: skip


def guarded(part, *args):
    """A part's result, or {"error": ...}: one crash must not cost the rest of the check (the
    GPU machines are lent for minutes); the table says which part failed, the exit code 1."""
    try:
        return part(*args)
    except Exception as error:  # noqa: BLE001 - reported in the table, the check goes on
        traceback.print_exc()
        return {"error": traceback.format_exception_only(error)[-1].strip()[:300]}


# --- main ---------------------------------------------------------------------------------------


def configs(root: Path, dry: bool, sizes: Sizes, extra: list[str]) -> tuple:
    """(the searches' words, the search config, retrain words, the DDP check's retrain config);
    a bad key is an error here, before anything runs."""
    dataset = {"data": "voc", "data.root": str(root)}
    proxy = DRY_PROXY if dry else {"proxy.model_args.pretrained_backbone": OFFLINE}
    search = dataset | proxy | parse_overrides(extra)
    search |= {
        "proxy.fit.iterations": str(sizes.search_iterations), "search.reduction": "2",
        "ppo.samples": str(sizes.samples),
        "search.confirm_top_k": "0", "search.confirm_seeds": "1",
        "search.confirm_baselines": "false", "search.confirm_fidelity": "0.0",
        "ray.dashboard": "false",
    }  # fmt: skip
    cfg = resolve_search("miou", search)
    # whole validation images shrunk to fit 512 x 128: the resume is what is checked, quickly
    tiny = {"retrain.model_args.pretrained_backbone": OFFLINE, "retrain.eval_scale": "[512, 128]"}
    retrain = dataset | (DRY_RETRAIN if dry else tiny)
    retrain |= {"retrain.crop_size": str(sizes.retrain_crop), "retrain.fit.batch_size": "8"}
    # the three concurrent runs choose the same convolution algorithms (autotuning under
    # contention may not): what remains between them is CUDA's nondeterministic atomics
    retrain["retrain.fit.cudnn_benchmark"] = "false"
    ddp = resolve_retrain(find_file("miou_bezier"), retrain | {"retrain.loss_group_size": "8"})
    words = [f"{k}={v}" for k, v in search.items()]
    return words, cfg, [f"{k}={v}" for k, v in retrain.items()], ddp


def run_searches(words: list[str], sizes: Sizes, dry: bool, tmp: Path) -> dict:
    """The two real searches: halving on over sizes.steps steps (a later step starts its trial
    actors again), off over one."""
    slots = ["search.cpu_slots=2"] if dry else ["1"]
    searches = {}
    for label, rungs, steps in (("halving on", 3, sizes.steps), ("halving off", 1, 1)):
        run_words = ["miou", *slots, *words, f"search.rungs={rungs}", f"ppo.steps={steps}"]
        searches[label] = search_run(
            run_words, tmp / f"search-{rungs}", tmp / f"search-{rungs}.log"
        )
    return searches


def trial_rate(sweep: dict, sizes: Sizes) -> tuple[float, str]:
    """(it/s of one of a search's trials, which rate it is): the sweep's per-model rate with as
    many models at once as the searches' samples."""
    models = sizes.samples if sizes.samples in sizes.packed else 1
    window = sweep.get(models, {})
    note = f"{models} packed" if models > 1 else "alone"
    return window.get("per_model", math.nan), note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="an existing VOC tree (default: generate one in a temp dir)")
    parser.add_argument("--images", type=int, help="train images to generate (default 1464)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy sizes on CPU, no nccl")
    parser.add_argument("overrides", nargs="*", help="search key=value for the proxy")
    args = parser.parse_args()
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("bench gpu: no CUDA GPU visible; nothing to measure (run it on a GPU machine)")
        return 0
    started = time.monotonic()
    sizes = replace(DRY if dry else GPU, **({"images": args.images} if args.images else {}))
    device = torch.device("cpu" if dry else "cuda")
    gpus = 0 if dry else torch.cuda.device_count()

    def progress(part: str) -> None:
        print(f"[bench gpu] {part} done at {time.monotonic() - started:.0f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.root).resolve() if args.root else tmp / "data"
        if not (root / "VOCdevkit").is_dir():
            make_voc(root, sizes.images)
        words, cfg, retrain_words, ddp_cfg = configs(root, dry, sizes, args.overrides)
        name = "CPU dry run" if dry else f"{gpus} x {torch.cuda.get_device_name()}"
        print(f"torch {torch.__version__}, {name}; data {root}")
        print(f"proxy: {cfg.proxy.model} {cfg.proxy.model_args}, {cfg.proxy.crop_size} px crops, "
              f"batch {cfg.proxy.fit.batch_size}")  # fmt: skip
        # what a search does before its trials: the image cache, and the loss kernels compiled
        # once into inductor's on-disk cache, where every process finds them
        train_set = build_train_set(cfg.data, cfg.proxy, without_holdout=True)
        raw = initial_raw(cfg.search.metric, cfg.search.ce_mix)
        warm_up_kernels(cfg, build_loss(cfg, raw, train_set.num_classes), device.type)

        sweep = guarded(packed_sweep, cfg, sizes, device)
        progress("proxy alone and packed")
        searches = run_searches(words, sizes, dry, tmp)
        progress("searches")
        resume = guarded(retrain_resume, retrain_words, tmp, sizes)
        progress("retrain")
        distances = guarded(distance_check, device)
        skipped = {"skipped": "skipped: CPU dry run (nccl)" if dry else "skipped: 1 GPU"}
        launched = guarded(nccl_launcher, retrain_words, tmp, sizes) if gpus >= 2 else skipped
        # on a CPU the same comparison over gloo, BatchNorm frozen (SyncBN needs CUDA)
        check = guarded(ddp_check, ddp_cfg, device.type, tmp) if gpus >= 2 or dry else skipped

        rows = proxy_rows(sweep)
        rate, rate_note = trial_rate(sweep, sizes) if "error" not in sweep else (math.nan, "")
        for label, run in searches.items():
            found = guarded(search_rows, label, run, rate, rate_note)
            rows += found if isinstance(found, list) else [failed(f"search, {label}", found)]
        rows += retrain_rows(resume, dry)
        alone = math.nan if "error" in sweep else sweep[1]["it_per_s"]
        rows += distance_rows(distances, alone)
        rows += nccl_rows(launched, check, "gloo" if dry else "nccl")

    print("\n| measurement | value | target | met |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |")
    print(f"\nwall time: {time.monotonic() - started:.0f} s (target <= 480 s on one GPU)")
    return 1 if any(str(row[1]).startswith("FAILED") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
