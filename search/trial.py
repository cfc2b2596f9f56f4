"""The proxy trial: train one proxy model with one sampled surrogate loss, score it on the reward
split with the exact metric. Plain Python; `proxy_trial` is the Ray Tune entry point around it.

A trial never raises for a bad loss: an exception, an out-of-memory error or a non-finite loss
comes back as status "failed" with the reason, so the search records it and goes on (SPEC B4).
"""

import math
import os
import time
import traceback
from dataclasses import asdict

import torch

import data  # noqa: F401  (first: the torchvision compatibility import)
from data import build_dataset, eval_loader
from data.transforms import eval_transforms, train_transforms
from search.config import Config
from search.searcher import trial_raw
from segnets import build_segnet
from segnets.engine import NonFiniteLossError, evaluate, fit, seed_everything
from surrogates import METRICS, SurrogateLoss, raw_to_control
from surrogates.curves import METRIC_CURVES


def build_loss(cfg: Config, raw: list[float], num_classes: int) -> SurrogateLoss:
    search = cfg.search
    return SurrogateLoss(
        search.metric,
        raw_to_control(raw, METRIC_CURVES[search.metric]),
        num_classes,
        tolerance=search.tolerance,
        drop_background=search.drop_background,
        region_weight=search.region_weight,
    )


def build_datasets(cfg: Config):
    """(train set, reward set) of the proxy task."""
    proxy = cfg.proxy
    train_set = build_dataset(
        cfg.data.name,
        cfg.data.root,
        "train",
        train_transforms(
            crop_size=proxy.crop_size,
            scale=proxy.scale,
            ratio_range=proxy.ratio_range,
            flip=proxy.flip,
            photometric=proxy.photometric,
            cat_max_ratio=proxy.cat_max_ratio,
        ),
        without_holdout=cfg.search.reward_split == "holdout",
        **cfg.data.params,
    )
    reward_set = build_dataset(
        cfg.data.name,
        cfg.data.root,
        cfg.search.reward_split,
        eval_transforms(crop_size=proxy.eval_crop, scale=proxy.eval_scale),
        **cfg.data.params,
    )
    return train_set, reward_set


def run_trial(cfg: Config, raw: list[float], seed: int, fault: str = "") -> dict:
    """Train and score one sample. Returns {"status", "reason", "seconds", metrics...}."""
    start = time.perf_counter()
    try:
        if fault == "raise":
            raise RuntimeError("injected fault (search.faults)")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        train_set, reward_set = build_datasets(cfg)
        num_classes = train_set.num_classes
        loss_fn = build_loss(cfg, raw, num_classes)
        if fault == "nan":
            loss_fn = _explodes(loss_fn, at_iteration=2)
        seed_everything(seed)
        model = build_segnet(cfg.proxy.model, num_classes, **cfg.proxy.model_args)
        fit_cfg = {**asdict(cfg.proxy.fit), "seed": seed, "quiet": True}
        fit(model, loss_fn, train_set, type(cfg.proxy.fit)(**fit_cfg), device=device)
        loader = eval_loader(reward_set, cfg.proxy.eval_batch_size)
        metrics = evaluate(
            model,
            loader,
            num_classes,
            device,
            tolerance=cfg.search.tolerance,
            drop_background=cfg.search.reward_drop_background,
        )
        result = {k: metrics[k] for k in (*METRICS, "mdice", "miou_image", "bf1_image")}
        result.update(status="ok", reason="")
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


def _explodes(loss_fn, at_iteration: int):
    calls = {"n": 0}

    def loss(logits, target):
        calls["n"] += 1
        value = loss_fn(logits, target)
        return value * math.nan if calls["n"] > at_iteration else value

    return loss


def proxy_trial(config: dict, cfg: Config) -> None:
    """Ray Tune function trainable. `config` is what the searcher suggested: raw_0 ... raw_{D-1},
    seed, fault (and which phase, step and sample the trial belongs to)."""
    import ray
    from ray import tune

    # Ray sets OMP_NUM_THREADS to the trial's CPUs: one core per trial on CPU
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    result = run_trial(cfg, trial_raw(config), config["seed"], config.get("fault", ""))
    result["node"] = ray.get_runtime_context().get_node_id()[:12]
    result["reward"] = result.get(cfg.search.metric, math.nan)  # Tune's metric; NaN if failed
    tune.report(result)
