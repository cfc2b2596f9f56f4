"""The training engine shared by the proxy trials of the search and by retrain: plain
functions, no callbacks. Retrain's loop (retrain/train.py) calls them between its evaluations
and checkpoints; the proxy trial calls `fit`.

setup_training  the model on its device (DDP-wrapped under torch.distributed) and its optimizer:
                SGD with momentum and weight decay (or AdamW), a learning-rate multiplier for
                everything outside `model.backbone` (the reference uses 10x for the heads, A§5)
train_batches   the endless, iteration-addressed batch stream (data.train_loader): a resumed
                run sees the batches an uninterrupted one would
train_steps     iterations [start, stop): poly schedule with optional linear warm-up, loss = main
                + aux_weight * aux, bf16 autocast on CUDA with the loss in float32, channels_last
                on CUDA, a non-finite loss check without a host sync per step, progress lines;
                returns how long the steps took and how long they waited for data
fit             all of it, from scratch or from a saved `training_state`: what a proxy trial
                trains
evaluate        exact `SegMetrics` over a loader with a prediction procedure (max, T, rankdice)
training_state  what a checkpoint carries (plain tensors: loads with weights_only), every
                process's RNG states among them; load_training_state reads one back on any device
usable_cpus     the cores this process may use (affinity, cgroup quota), for threads and workers
"""

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from data import train_loader
from surrogates import SegMetrics

PREDICTIONS = ("max", "T", "rankdice")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the search records the trial as failed."""

    def __init__(self, iteration: int, value: float):
        super().__init__(f"non-finite loss {value} at iteration {iteration}")
        self.iteration, self.value = iteration, value


@dataclass
class FitConfig:
    iterations: int = 300  # optimizer steps
    batch_size: int = 16  # images per step, over all processes under DDP
    optimizer: str = "sgd"  # sgd (the reference, pretrained backbones) or adamw (from scratch)
    lr: float = 0.01  # base learning rate (backbone)
    head_lr_mult: float = 10.0  # lr multiplier for parameters outside model.backbone
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    poly_power: float = 0.9  # lr = (lr - min_lr) * (1 - it / iterations) ** power + min_lr
    min_lr: float = 1e-4  # where every parameter group ends, heads included (mmcv)
    warmup_iterations: int = 0  # linear warm-up from 0 over this many iterations
    aux_weight: float = 0.4  # weight of the auxiliary head's loss (when the model has one)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # CUDA only: NHWC activations (faster convolutions on tensor cores) and cuDNN's autotuner,
    # which pays off because training crops have one fixed size
    channels_last: bool = True
    cudnn_benchmark: bool = True
    sync_bn: bool = False  # under DDP on CUDA, BatchNorm statistics over all processes (SyncBN)
    workers: int | None = None  # loader processes; None: on CUDA threads - 1, on CPU 0
    seed: int = 0  # data order and augmentation
    log_every: int = 50  # iterations between progress lines (0 = never)
    eval_every: int = 0  # retrain: iterations between evaluations (0 = only at the end)
    checkpoint_every: int = 0  # retrain: iterations between checkpoints (0 = only at the end)
    quiet: bool = False  # no progress lines (proxy trials)


def lr_at(cfg: FitConfig, iteration: int, lr_mult: float = 1.0) -> float:
    """Learning rate of a parameter group at an iteration: poly decay from lr * lr_mult down to
    min_lr, linear warm-up first. Every group ends at min_lr, the 10x heads too (mmcv's
    PolyLrUpdaterHook decays each group's own initial lr to the one min_lr)."""
    start = cfg.lr * lr_mult
    lr = (start - cfg.min_lr) * (1 - iteration / cfg.iterations) ** cfg.poly_power + cfg.min_lr
    if iteration < cfg.warmup_iterations:
        lr *= (iteration + 1) / cfg.warmup_iterations
    return lr


def make_optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the backbone at lr, everything else (heads) at lr * head_lr_mult.

    SGD is the reference recipe; tiny networks trained from scratch on CPU proxies learn several
    times faster with AdamW (on shapes, SGD at 300 iterations still predicts only background)."""
    backbone, heads = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith("backbone.") else heads).append(param)
    groups = [
        {"params": backbone, "lr_mult": 1.0},
        {"params": heads, "lr_mult": cfg.head_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}'; valid: adamw, sgd")


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


CHECK_EVERY = 50  # iterations between reads of the losses (one host sync each)


@dataclass
class TrainStats:
    """What a run of training steps took: iterations, wall seconds, seconds blocked on data."""

    iterations: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    first_seconds: float = 0.0  # the first iteration's: loader start, cuDNN autotuning, tracing

    @property
    def data_wait(self) -> float:
        """Share of the wall time spent waiting for batches."""
        return self.data_seconds / self.seconds if self.seconds > 0 else math.nan

    @property
    def iterations_per_second(self) -> float:
        """The steady rate: iterations after the first over their time."""
        steady = self.seconds - self.first_seconds
        return (self.iterations - 1) / steady if self.iterations > 1 and steady > 0 else math.nan


def _read_losses(losses: torch.Tensor, first: int, world_size: int) -> list[float]:
    """The losses of iterations first, first + 1, ... (kept on the device), averaged over the
    processes, on the host: the one sync of a window of steps. A non-finite one raises
    NonFiniteLossError naming its iteration; every rank reads the same values at the same
    iterations, so a NaN on one stops all instead of hanging the others."""
    if world_size > 1:
        losses = losses.clone()
        dist.all_reduce(losses)
        losses /= world_size
    values = losses.tolist()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            raise NonFiniteLossError(first + offset, value)
    return values


def rng_state() -> dict:
    """torch, numpy and Python RNG states as tensors, ints and tuples, so that a checkpoint
    loads with torch.load(weights_only=True)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():  # this process's GPU only: each DDP rank saves its own
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and every GPU) generators from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compute_loss(outputs: dict, target: torch.Tensor, loss_fn: Callable, aux_weight: float):
    loss = loss_fn(outputs["out"], target)
    if "aux" in outputs and aux_weight > 0:
        loss = loss + aux_weight * loss_fn(outputs["aux"], target)
    return loss


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def setup_training(
    model: nn.Module, cfg: FitConfig, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """(what the training steps call, the optimizer): the model moved to `device`, under
    torch.distributed wrapped in DDP, which averages the gradients over the processes."""
    world_size = process_rank()[1]
    if uses_sync_bn(cfg, world_size, device):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the BN layers in place
    model.to(device, memory_format=memory_format(cfg, device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    net = model
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return net, make_optimizer(model, cfg)


def memory_format(cfg: FitConfig, device: torch.device) -> torch.memory_format:
    """The layout the engine trains in, weights, images and so logits: NHWC on CUDA with
    cfg.channels_last (faster convolutions on tensor cores), else NCHW."""
    nhwc = cfg.channels_last and torch.device(device).type == "cuda"
    return torch.channels_last if nhwc else torch.contiguous_format


def uses_sync_bn(cfg: FitConfig, world_size: int, device: torch.device) -> bool:
    """SyncBN (the reference retrain's) needs several processes and CUDA: torch's SyncBatchNorm
    has no CPU kernels, so CPU/gloo processes keep their own per-process BatchNorm."""
    return cfg.sync_bn and world_size > 1 and device.type == "cuda"


def train_batches(train_set, cfg: FitConfig, device: torch.device, start: int = 0):
    """The batch stream from iteration `start` on, this process's share under DDP, on `device`.

    A training set whose transform is batch-wise (data.transforms.TrainAugment) comes out of the
    loader as uint8 crops with their random draws; flip, photometric distortion and
    normalisation then run here on the whole batch, on the GPU when there is one."""
    rank, world_size = process_rank()
    loader = train_loader(
        train_set,
        cfg.batch_size,
        cfg.seed,
        start_iteration=start,
        workers=loader_workers(cfg, device),
        pin_memory=device.type == "cuda",
        rank=rank,
        world_size=world_size,
    )
    augment = getattr(train_set, "transform", None)
    moved = ([x.to(device, non_blocking=True) for x in batch] for batch in loader)
    if getattr(augment, "batch_wise", False):
        return (augment.on_batch(*batch) for batch in moved)
    return (tuple(batch) for batch in moved)


MAX_LOADER_WORKERS = 8  # per process: a GPU's batches need a few, not a big host's 100


def loader_workers(cfg: FitConfig, device: torch.device) -> int:
    """cfg.workers, or when None: on CUDA one process fewer than this process's CPU threads
    (a search trial's share of the machine, or a retrain process's; at least 1, at most
    MAX_LOADER_WORKERS), on CPU none (the cores are the trials' or the processes' own)."""
    if cfg.workers is not None:
        return cfg.workers
    if device.type != "cuda":
        return 0
    return min(MAX_LOADER_WORKERS, max(1, torch.get_num_threads() - 1))


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity (taskset, Slurm, a container's
    cpuset) and a cgroup v2 CPU quota (docker --cpus), not os.cpu_count()'s whole host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to read: the affinity alone
    return max(1, cores or 1)


def train_steps(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    batches,
    cfg: FitConfig,
    device: torch.device,
    start: int,
    stop: int,
) -> TrainStats:
    """Train iterations [start, stop) of cfg.iterations on batches from `train_batches`.

    loss_fn: (logits (N, C, H, W), target (N, H, W)) -> 0-dim loss, applied to both heads; a
    loss module is moved to `device` (its tables with it). Nothing in a step waits for the GPU:
    the losses stay on the device and are read every CHECK_EVERY iterations and at `stop`,
    where a NaN or inf raises NonFiniteLossError with its iteration (on every process at once).
    """
    rank, world_size = process_rank()
    autocast = device.type == "cuda" and cfg.amp
    layout = memory_format(cfg, device)
    logging = not cfg.quiet and cfg.log_every > 0  # the same on every rank: reads all-reduce
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    stats, started = TrainStats(), time.perf_counter()
    losses, first, shown = torch.zeros(CHECK_EVERY, device=device), start, []
    net.train()
    for iteration in range(start, stop):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, iteration, group["lr_mult"])
        waited = time.perf_counter()
        images, target = next(batches)  # on the device (train_batches)
        stats.data_seconds += time.perf_counter() - waited
        images = images.contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            outputs = net(images)
        # our models' classifiers make float32 logits inside autocast (segnets.models.Classifier):
        # the loss never sees bf16-rounded ones; .float() covers a model that does not
        outputs = {k: v.float() for k, v in outputs.items()}
        loss = compute_loss(outputs, target, loss_fn, cfg.aux_weight)
        losses[iteration - first] = loss.detach()  # a device copy, no sync
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        done = iteration + 1
        if iteration == start:
            stats.first_seconds = time.perf_counter() - started
        log = logging and (done % cfg.log_every == 0 or done == cfg.iterations)
        if log or done - first == CHECK_EVERY or done == stop:
            values = _read_losses(losses[: done - first], first, world_size)
            shown, first = shown + values if logging else [], done
        if log and rank == 0:
            rate = (done - start) / (time.perf_counter() - started)
            print(
                f"iter {done}/{cfg.iterations}  loss {sum(shown) / len(shown):.4f}  "
                f"lr {lr_at(cfg, iteration):.5f}  "
                f"{rate:.2f} it/s  eta {_format_seconds((cfg.iterations - done) / rate)}",
                flush=True,
            )
        if log:
            shown = []
    stats.iterations, stats.seconds = stop - start, time.perf_counter() - started
    return stats


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int) -> dict:
    """What continues a training exactly: weights, optimizer state, iteration, and the RNG states
    of every process (rank order). Under torch.distributed a collective: every rank calls it."""
    world_size = process_rank()[1]
    states = [rng_state()]
    if world_size > 1:  # each rank draws its own dropout masks: each needs its own state back
        states = [None] * world_size
        dist.all_gather_object(states, rng_state())
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "rng": states,
    }


def load_training_state(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> int:
    """Load a saved `training_state` into model and optimizer, restore this process's RNG
    states; its iteration.

    The file is read onto the CPU whatever the training device: load_state_dict copies weights
    and optimizer state to their parameters' device, and torch.set_rng_state takes only a CPU
    ByteTensor (a state mapped onto the GPU raises TypeError)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rank, world_size = process_rank()
    if len(state["rng"]) != world_size:
        raise ValueError(
            f"{path} holds the RNG states of {len(state['rng'])} process(es), "
            f"not of the {world_size} resuming it"
        )
    set_rng_state(state["rng"][rank])
    return state["iteration"]


def fit(
    model: nn.Module,
    loss_fn: Callable,
    train_set: torch.utils.data.Dataset,
    cfg: FitConfig,
    device: str | torch.device = "cpu",
    stop: int | None = None,
    resume_from: str | Path | None = None,
    save_to: str | Path | None = None,
) -> TrainStats:
    """Train `model` (in place) on `train_set` up to iteration `stop` (default cfg.iterations)
    of the cfg.iterations schedule: from scratch, or from the `training_state` file
    `resume_from`; the state at `stop` goes to `save_to`. Training to k, saving and going on
    from there gives the very model of training straight through (a successive-halving rung of
    the search continues that way; retrain/train.py runs the same steps with evaluations)."""
    device = torch.device(device)
    net, optimizer = setup_training(model, cfg, device)
    start = 0 if resume_from is None else load_training_state(resume_from, model, optimizer)
    stop = cfg.iterations if stop is None else stop
    batches = train_batches(train_set, cfg, device, start)
    stats = train_steps(net, optimizer, loss_fn, batches, cfg, device, start, stop)
    if save_to is not None:  # whole or not at all: a trial killed while saving runs again
        partial = Path(save_to).with_suffix(".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        torch.save(training_state(model, optimizer, stop), partial)
        partial.replace(save_to)
    return stats


def predict(logits: torch.Tensor, procedure: str = "max") -> torch.Tensor:
    """(N, C, H, W) logits -> (N, H, W) int64 labels.

    max: argmax. T: each class probability thresholded at 0.5; a pixel where no class reaches
    it gets the label C, "no class", which SegMetrics counts as a miss for its GT class (softmax
    probabilities sum to 1, so at most one class passes, except a tie at exactly 0.5).
    rankdice: the RankDice decoding (Dai & Li 2023) of the softmax probabilities, non-overlapping
    labels that maximise the expected Dice (the `rankseg` package)."""
    if procedure == "max":
        return logits.argmax(1)
    if procedure == "T":
        top_prob, top_class = torch.softmax(logits.float(), dim=1).max(1)
        return torch.where(top_prob >= 0.5, top_class, logits.shape[1])
    if procedure == "rankdice":
        from rankseg import RankSEG  # optional dependency, needed only here

        probs = torch.softmax(logits.float(), dim=1)
        return RankSEG(metric="dice", output_mode="multiclass", solver="RMA")(probs)
    raise ValueError(f"unknown prediction procedure '{procedure}'; valid: {', '.join(PREDICTIONS)}")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    num_classes: int,
    device: str | torch.device = "cpu",
    prediction: str = "max",
    classes: list[int] | None = None,
    drop_background: bool = False,
    tolerance: int = 5,
    boundary: bool = True,
    amp: bool = True,
    specs: Sequence = (),
) -> dict:
    """Exact dataset-level metrics of `model` on `loader` (SegMetrics.compute()'s dict).

    Predictions are resized to the label size when they differ (whole-image evaluation).
    `classes`, a class-of-interest list, restricts the class means (miou, macc, mdice, biou,
    bf1) to those classes; fwiou and gacc stay over all pixels. `specs`: metric specs computed
    beside them, each under its name (SegMetrics)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction procedure '{prediction}'; valid: {PREDICTIONS}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = SegMetrics(
        num_classes,
        drop_background=drop_background,
        tolerance=tolerance,
        boundary=boundary,
        specs=specs,
    )
    autocast = device.type == "cuda" and amp
    # whole images come in hundreds of sizes (VOC): cuDNN's autotuner would time every
    # convolution afresh for each, which costs more than it saves; training turns it back on
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    try:
        for images, target in loader:
            images, target = images.to(device), target.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(images)["out"]
            logits = logits.float()
            if logits.shape[-2:] != target.shape[-2:]:
                size = target.shape[-2:]
                logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
            metrics.update(predict(logits, prediction), target)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        model.train(was_training)
    metrics.all_reduce()  # under DDP each process saw its shard of the loader
    results = metrics.compute()
    if classes is not None:
        results = restrict_classes(results, classes, drop_background)
    return results


def restrict_classes(results: dict, classes: list[int], drop_background: bool = False) -> dict:
    """Class means over a class-of-interest subset (NaN classes skipped, as in SegMetrics)."""
    per_class = results["per_class"]
    restricted = dict(results)
    for key in ("miou", "macc", "mdice", "biou", "bf1"):
        keep = [c for c in classes if not (key == "bf1" and drop_background and c == 0)]
        values = torch.tensor([per_class[key][c] for c in keep], dtype=torch.float64)
        defined = values[~values.isnan()]
        restricted[key] = float(defined.mean()) if defined.numel() else math.nan
    restricted["classes"] = list(classes)
    return restricted
