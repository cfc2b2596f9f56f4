"""The proxy trial: train one proxy model with one sampled surrogate loss, score it on the reward
split with the exact metric (SPEC B4). Plain Python, no Ray: `run_trial` is what the Ray
adapter's trainable (search/searcher.py) calls in each trial.

A trial never raises for a bad loss: an exception, an out-of-memory error or a non-finite loss
comes back as status "failed" with the reason, so the search records it and goes on.
"""

import math
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

import data  # noqa: F401  (first: the torchvision compatibility import)
from data import build_dataset, eval_loader
from data.transforms import eval_transforms
from experiments.config import build_train_set
from search.config import Config
from search.space import ce_weight, to_theta
from segnets import build_segnet
from segnets.engine import NonFiniteLossError, TrainStats, evaluate, fit, seed_everything
from surrogates import METRIC_COLUMNS, SurrogateLoss
from surrogates.fused import compiling
from surrogates.losses import CrossEntropy

SPEED_COLUMNS = ("it_per_s", "data_wait", "peak_gb")  # what speed_columns() adds to a result


def build_loss(cfg: Config, raw: list[float], num_classes: int) -> SurrogateLoss:
    search = cfg.search
    return SurrogateLoss(
        search.metric,
        to_theta(search.metric, raw),
        num_classes,
        tolerance=search.tolerance,
        drop_background=search.drop_background,
        region_weight=search.region_weight,
        group_size=cfg.proxy.loss_group_size,
        ce_weight=ce_weight(search.ce_mix, search.metric, raw),
    )


def warm_up_kernels(cfg: Config, loss_fn: SurrogateLoss) -> float:
    """Compile the loss's fused kernels in this process, on the trials' device, before any
    trial starts: the code lands in inductor's on-disk cache, where each trial's process finds
    it (a few seconds of tracing instead of ~15 s of compiling, on every worker at once).
    Dynamic shapes: one small batch serves every size. Seconds spent, 0 when not compiling."""
    if not compiling():
        return 0.0
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size, classes = cfg.proxy.crop_size, loss_fn.num_classes
    logits = torch.randn(2, classes, size, size, device=device, requires_grad=True)
    # every class in the batch, then half of them (bf1 computes only the classes present)
    for present in (classes, max(2, classes // 2)):
        target = torch.randint(0, present, (2, size, size), device=device)
        loss_fn.to(device)(logits, target).backward()
    return time.perf_counter() - start


def build_datasets(cfg: Config):
    """(train set, reward set) of the proxy task. With proxy.cache_images the reward images are
    cached like the training ones, at the size the evaluation resizes them to (eval_scale): the
    same items as decoding them in every trial (Cityscapes: 298 images of 2048 x 1024, 20-30 s
    of one core per trial while the GPU waits)."""
    from experiments.config import with_image_cache

    proxy = cfg.proxy
    train_set = build_train_set(
        cfg.data, proxy, without_holdout=cfg.search.reward_split == "holdout"
    )
    reward_set = build_dataset(
        cfg.data.name, cfg.data.root, cfg.search.reward_split, None, **cfg.data.params
    )
    transform = eval_transforms(crop_size=proxy.eval_crop, scale=proxy.eval_scale)
    reward_set = with_image_cache(
        reward_set, transform, proxy.eval_scale, cfg.data, proxy.cache_images
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
) -> dict:
    """Train and score one sample (loss "ce": cross-entropy instead, a confirmation-round
    baseline). A successive-halving rung trains to iteration `stop` of the proxy schedule,
    from the checkpoint `resume_from` of the sample's previous rung, and saves its own to
    `save_to` for the next. Returns {"status", "reason", "seconds", metrics...}."""
    start = time.perf_counter()
    try:
        if fault == "raise":
            raise RuntimeError("injected fault (search.faults)")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        train_set, reward_set = build_datasets(cfg)
        num_classes = train_set.num_classes
        if loss == "ce":
            loss_fn = CrossEntropy(ignore_index=train_set.ignore_index, num_classes=num_classes)
        else:
            loss_fn = build_loss(cfg, raw, num_classes)
        if fault == "nan":
            loss_fn = _explodes(loss_fn, at_iteration=2)
        seed_everything(seed)
        model = build_segnet(cfg.proxy.model, num_classes, **cfg.proxy.model_args)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fit_cfg = replace(cfg.proxy.fit, seed=seed, quiet=True)
        stats = fit(model, loss_fn, train_set, fit_cfg, device, stop, resume_from, save_to)
        metrics = evaluate(
            model,
            eval_loader(reward_set, cfg.proxy.eval_batch_size),
            num_classes,
            device,
            tolerance=cfg.search.tolerance,
            drop_background=cfg.search.reward_drop_background,
        )
        result = {k: metrics[k] for k in METRIC_COLUMNS} | {"status": "ok", "reason": ""}
        result |= speed_columns(stats, device)
        if not math.isfinite(result[cfg.search.metric]):
            reason = f"{cfg.search.metric} undefined on the reward split"
            result.update(status="failed", reason=reason)
    except NonFiniteLossError as error:
        result = {"status": "failed", "reason": str(error)}
    except Exception as error:  # noqa: BLE001 - any failure is recorded, the search goes on
        last = traceback.format_exception_only(error)[-1].strip()
        if isinstance(error, torch.cuda.OutOfMemoryError):
            last = "out of memory: " + last
        result = {"status": "failed", "reason": last[:300]}
    result["seconds"] = time.perf_counter() - start
    return result


def speed_columns(stats: TrainStats, device: str) -> dict:
    """Training speed of a trial for trials.csv: iterations per second (after the first, which
    carries the start-up), the share of the time spent waiting for data, the GPU's peak memory
    in GiB (NaN on CPU)."""
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
