"""The proxy trial: train one proxy model with one sampled surrogate loss, score it on the reward
split with the exact metric (SPEC B4). Plain Python, no Ray: `run_trial` is what the Ray
adapter's trainable (search/searcher.py) calls in each trial.

A trial never raises for a bad loss: an exception or a non-finite loss comes back as status
"failed" with the reason, so the search records it and goes on. An out-of-memory error is the
machine's doing (trials packed on one GPU peaked together), not the loss's: the trial runs once
more, and a second one comes back as status "machine", which the policy update leaves neutral.
"""

import gc
import math
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

import data  # noqa: F401  (first: the torchvision compatibility import)
from data import build_dataset, eval_loader
from data.transforms import eval_transforms
from experiments.config import TrainSettings, build_train_set, with_image_cache
from search.config import (
    Config,
    baseline_args,
    confirm_iterations,
    reward_columns,
    target,
    target_specs,
)
from search.space import ce_weight, to_theta
from segnets import build_segnet
from segnets.engine import (
    NonFiniteLossError,
    TrainStats,
    evaluate,
    fit,
    memory_format,
    seed_everything,
)
from surrogates import SurrogateLoss
from surrogates import build_loss as build_named_loss
from surrogates.fused import compiling
from surrogates.losses import CrossEntropy

# what speed_columns() adds to a result: the training speed, and where a trial's seconds went
SPEED_COLUMNS = ("it_per_s", "data_wait", "peak_gb", "setup_s", "train_s", "state_s", "eval_s")


def build_loss(
    cfg: Config, raw: list[float], num_classes: int, settings: TrainSettings | None = None
) -> SurrogateLoss:
    search, settings = cfg.search, settings or cfg.proxy
    metric = target(search)  # a paper metric's name or a MetricSpec
    return SurrogateLoss(
        metric,
        to_theta(metric, raw),
        num_classes,
        tolerance=search.tolerance,
        drop_background=search.drop_background,
        region_weight=search.region_weight,
        group_size=settings.loss_group_size,
        ce_weight=ce_weight(search.ce_mix, metric, raw),
    )


def warm_up_kernels(
    cfg: Config,
    loss_fn: SurrogateLoss,
    device: str | None = None,
    layout: torch.memory_format | None = None,
) -> float:
    """Compile the loss's fused kernels in this process, on the trials' device, before any
    trial starts: the code lands in inductor's on-disk cache, where each trial's process finds
    it (a few seconds of tracing instead of ~15 s of compiling, on every worker at once).
    The logits have the shape and memory layout the engine trains with (the batch and crop,
    NHWC on CUDA): dynamo guards the kernels' graphs on the batch size and on the strides, so
    a warm-up of another batch or layout leaves every trial to compile its own. Seconds spent,
    0 when not compiling."""
    if not compiling():
        return 0.0
    start = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fit_cfg, classes = cfg.proxy.fit, loss_fn.num_classes
    shape = (fit_cfg.batch_size, classes, cfg.proxy.crop_size, cfg.proxy.crop_size)
    logits = torch.randn(shape, device=device)
    logits = logits.contiguous(memory_format=layout or memory_format(fit_cfg, device))
    logits.requires_grad_(True)
    # every class in the batch, then half of them (bf1 computes only the classes present)
    for present in (classes, max(2, classes // 2)):
        target = torch.randint(0, present, (shape[0], *shape[2:]), device=device)
        loss_fn.to(device)(logits, target).backward()
    return time.perf_counter() - start


def trial_settings(cfg: Config, fidelity: str = "proxy") -> TrainSettings:
    """What a trial trains: the proxy, or at fidelity "confirm" the confirmation round's
    full-size network and crops (cfg.confirm) with their schedule over confirm_iterations."""
    if fidelity == "proxy":
        return cfg.proxy
    fit = replace(cfg.confirm.fit, iterations=confirm_iterations(cfg), log_every=0)
    return replace(cfg.confirm, fit=fit)


def build_datasets(cfg: Config, settings: TrainSettings | None = None):
    """(train set, reward set) of a trial (default: the proxy task). With cache_images the
    reward images are cached like the training ones, at the size the evaluation resizes them to
    (eval_scale): the same items as decoding them in every trial (Cityscapes: 298 images of
    2048 x 1024, 20-30 s of one core per trial while the GPU waits)."""
    settings = settings or cfg.proxy
    train_set = build_train_set(
        cfg.data, settings, without_holdout=cfg.search.reward_split == "holdout"
    )
    reward_set = build_dataset(
        cfg.data.name, cfg.data.root, cfg.search.reward_split, None, **cfg.data.params
    )
    crop = getattr(settings, "eval_crop", None)  # the proxy's centre crop; else whole images
    transform = eval_transforms(crop_size=crop, scale=settings.eval_scale)
    reward_set = with_image_cache(
        reward_set, transform, settings.eval_scale, cfg.data, settings.cache_images
    )
    return train_set, reward_set


def run_trial(
    cfg: Config,
    raw: list[float],
    seed: int,
    fault: str = "",
    loss: str = "surrogate",
    stop: int | None = None,
    resume_from: str | Path | None = None,
    save_to: str | Path | None = None,
    fidelity: str = "proxy",
) -> dict:
    """Train and score one sample (loss "ce": cross-entropy instead, another registered loss
    name such as "dice": that hand-made loss; confirmation-round baselines) on the proxy, or
    at fidelity "confirm" on the confirmation round's settings (trial_settings). A
    successive-halving rung trains to iteration `stop` of the proxy schedule, from the
    training state `resume_from` of the sample's previous rung, and saves its own to `save_to`
    for the next. Returns {"status", "reason", "seconds", metrics...}."""
    start = time.perf_counter()
    for attempt in range(1, OOM_ATTEMPTS + 1):
        try:
            if fault == "raise":
                raise RuntimeError("injected fault (search.faults)")
            if fault == "oom-always" or (fault == "oom" and attempt == 1):
                raise torch.OutOfMemoryError("injected out of memory (search.faults)")
            settings = trial_settings(cfg, fidelity)
            args = (stop, resume_from, save_to, fault)
            result = train_and_score(cfg, settings, raw, seed, loss, *args)
        except NonFiniteLossError as error:
            result = {"status": "failed", "reason": str(error)}
        except Exception as error:  # noqa: BLE001 - any failure is recorded, the search goes on
            last = traceback.format_exception_only(error)[-1].strip()[:300]
            result = {"status": "failed", "reason": last}
            if out_of_memory(error):
                del error  # its traceback holds the frames' tensors
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if attempt < OOM_ATTEMPTS:
                    continue
                reason = f"out of memory on {attempt} attempts (the machine's, not the loss's): "
                result = {"status": "machine", "reason": reason + last}
        break
    result["seconds"] = time.perf_counter() - start
    return result


OOM_ATTEMPTS = 2  # an out-of-memory trial runs once more before it counts as the machine's


def out_of_memory(error: BaseException) -> bool:
    """An out-of-memory error, also where torch.compile wrapped it in one of its own."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            return True
        error = error.__cause__ or error.__context__
    return False


def train_and_score(cfg, settings, raw, seed, loss, stop, resume_from, save_to, fault="") -> dict:
    """run_trial's work, which raises: data, loss, network, fit, the reward's metrics."""
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_set, reward_set = build_datasets(cfg, settings)
    num_classes = train_set.num_classes
    if loss == "ce":
        loss_fn = CrossEntropy(ignore_index=train_set.ignore_index, num_classes=num_classes)
    elif loss != "surrogate":  # a hand-made baseline (search.steps.HANDMADE_BASELINES)
        args = baseline_args(cfg.search, loss) | {"num_classes": num_classes}
        loss_fn = build_named_loss(loss, ignore_index=train_set.ignore_index, **args)
    else:
        loss_fn = build_loss(cfg, raw, num_classes, settings)
    if fault == "nan":
        loss_fn = _explodes(loss_fn, at_iteration=2)
    seed_everything(seed)
    model = build_segnet(settings.model, num_classes, **settings.model_args)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fit_cfg = replace(settings.fit, seed=seed, quiet=True)
    built = time.perf_counter()
    stats = fit(model, loss_fn, train_set, fit_cfg, device, stop, resume_from, save_to)
    trained = time.perf_counter()
    metrics = evaluate(
        model,
        eval_loader(reward_set, settings.eval_batch_size),
        num_classes,
        device,
        tolerance=cfg.search.tolerance,
        drop_background=cfg.search.reward_drop_background,
        specs=target_specs(cfg.search),  # a searched spec: its exact value is the reward
    )
    result = {k: metrics[k] for k in reward_columns(cfg.search)} | {"status": "ok", "reason": ""}
    result |= speed_columns(stats, device)
    result |= {
        "setup_s": built - started,  # datasets, loss, network
        "train_s": stats.seconds,
        "state_s": trained - built - stats.seconds,  # to the device, a rung's state in and out
        "eval_s": time.perf_counter() - trained,  # the reward split
    }
    if not math.isfinite(result[cfg.search.metric]):
        reason = f"{cfg.search.metric} undefined on the reward split"
        result.update(status="failed", reason=reason)
    return result


def speed_columns(stats: TrainStats, device: str) -> dict:
    """Training speed of a trial for trials.csv: iterations per second (after the first, which
    carries the start-up), the share of the time spent waiting for data, the GPU's peak memory
    in GiB (NaN on CPU). train_and_score adds the seconds of each part (SPEED_COLUMNS)."""
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else math.nan
    return {
        "it_per_s": stats.iterations_per_second,
        "data_wait": stats.data_wait,
        "peak_gb": peak,
    }


def _explodes(loss_fn, at_iteration: int):
    calls = {"n": 0}

    def loss(logits, target):
        calls["n"] += 1
        value = loss_fn(logits, target)
        return value * math.nan if calls["n"] > at_iteration else value

    return loss
