"""One retrain process: train the full-size model on a run folder's config.yaml, evaluate it
periodically with every metric, write metrics.csv, checkpoints and final.json.

Run alone (`train(run_dir)`) or as each of the torchrun processes of a DDP retrain
(`python -m retrain.train RUN_DIR`): torchrun's RANK / WORLD_SIZE / LOCAL_RANK select the
process group (nccl on GPUs, gloo on CPU). A run folder with checkpoints/latest.pth resumes.
"""

import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Subset

import data  # noqa: F401  (first: the torchvision compatibility import)
from data import build_dataset, eval_loader
from data.transforms import train_transforms, whole_image_transforms
from retrain.config import OPEN_KEYS, RetrainConfig
from search import config as configs
from search.searcher import METRIC_COLUMNS, write_atomic
from segnets import build_segnet
from segnets.engine import evaluate, fit, process_rank, seed_everything
from surrogates import build_loss


def make_loss(cfg: RetrainConfig, num_classes: int) -> torch.nn.Module:
    kwargs = dict(cfg.loss)
    name = kwargs.pop("name", "surrogate")
    declared = kwargs.pop("num_classes", num_classes)  # a searched-loss file may state it
    if declared != num_classes:
        raise ValueError(
            f"loss.num_classes={declared} but {cfg.data.name} has {num_classes} classes"
        )
    if name == "surrogate":
        kwargs.setdefault("tolerance", cfg.retrain.tolerance)
    return build_loss(name, num_classes=num_classes, **kwargs)


def make_datasets(cfg: RetrainConfig, rank: int = 0, world_size: int = 1):
    """(train set, this process's share of the evaluation set)."""
    settings = cfg.retrain
    train_set = build_dataset(
        cfg.data.name,
        cfg.data.root,
        "train",
        train_transforms(
            crop_size=settings.crop_size,
            scale=settings.scale,
            ratio_range=settings.ratio_range,
            flip=settings.flip,
            photometric=settings.photometric,
            cat_max_ratio=settings.cat_max_ratio,
        ),
        **cfg.data.params,
    )
    eval_set = build_dataset(
        cfg.data.name,
        cfg.data.root,
        settings.eval_split,
        whole_image_transforms(scale=settings.eval_scale),
        **cfg.data.params,
    )
    if world_size > 1:
        eval_set = Subset(eval_set, range(rank, len(eval_set), world_size))
    return train_set, eval_set


def train(run_dir: str | Path) -> dict | None:
    run_dir = Path(run_dir)
    cfg: RetrainConfig = configs.load(run_dir / "config.yaml", RetrainConfig, OPEN_KEYS)
    device = _init_process_group()
    rank, world_size = process_rank()
    settings = cfg.retrain
    train_set, eval_set = make_datasets(cfg, rank, world_size)
    num_classes = train_set.num_classes
    loss_fn = make_loss(cfg, num_classes)
    seed_everything(settings.fit.seed)
    model = build_segnet(settings.model, num_classes, **settings.model_args)

    checkpoint = run_dir / "checkpoints" / "latest.pth"
    resume = checkpoint if checkpoint.is_file() else None
    done_iterations = torch.load(checkpoint, weights_only=False)["iteration"] if resume else 0
    rows = [r for r in _read_rows(run_dir) if int(r["iteration"]) <= done_iterations]
    started = time.perf_counter()
    loader = eval_loader(eval_set, settings.eval_batch_size)

    def on_eval(net: torch.nn.Module, iteration: int) -> None:
        results = evaluate(
            net,
            loader,
            num_classes,
            device,
            prediction=settings.prediction,
            classes=settings.classes,
            drop_background=settings.drop_background,
            tolerance=settings.tolerance,
        )
        if rank != 0:
            return
        rows.append(
            {
                "iteration": iteration,
                "seconds": round(time.perf_counter() - started, 2),
                **{k: results[k] for k in METRIC_COLUMNS},
            }
        )
        write_atomic(run_dir / "metrics.csv", _csv(rows))
        shown = "  ".join(f"{k} {100 * results[k]:.2f}" for k in METRIC_COLUMNS[:6])
        print(f"[retrain] eval at {iteration}: {shown}", flush=True)

    fit(model, loss_fn, train_set, settings.fit, device, run_dir / "checkpoints", resume, on_eval)
    final = None
    if rank == 0:
        final = {**rows[-1], "processes": world_size, "loss": cfg.loss, "data": cfg.data.name}
        write_atomic(run_dir / "final.json", json.dumps(final, indent=2))
    if world_size > 1:
        dist.destroy_process_group()
    return final


def _init_process_group() -> torch.device:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        torch.set_num_threads(1)  # one core per CPU process
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["iteration", "seconds", *METRIC_COLUMNS])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


if __name__ == "__main__":
    train(sys.argv[1])
