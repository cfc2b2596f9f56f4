"""One retrain process: the full-size model trained on a run folder's config.yaml, evaluated at
intervals with every metric; metrics.csv, classes.csv (per class, by the dataset's class names),
checkpoints/latest.pth and final.json in the run folder.

Run alone (`train(run_dir)`) or as each of the torchrun processes of a DDP retrain
(`python -m retrain.train RUN_DIR`): torchrun's RANK / WORLD_SIZE / LOCAL_RANK select the
process group (nccl on GPUs, gloo on CPU). A run folder with checkpoints/latest.pth resumes: the
batch stream is addressed by iteration and the RNG states are restored, so on CPU a resumed run
ends with exactly the metrics of an uninterrupted one.
"""

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Subset

import data  # noqa: F401  (first: the torchvision compatibility import)
from data import build_dataset, eval_loader
from data.transforms import whole_image_transforms
from experiments.config import build_train_set, to_dict
from results.files import atomic_path, read_csv, write_csv, write_json
from retrain import config as configs
from retrain.config import RetrainConfig, eval_specs
from segnets import build_segnet
from segnets.engine import (
    evaluate,
    load_training_state,
    process_rank,
    seed_everything,
    setup_training,
    train_batches,
    train_steps,
    training_state,
    usable_cpus,
)
from surrogates import METRIC_COLUMNS, METRICS, build_loss

CHECKPOINT = Path("checkpoints") / "latest.pth"
CLASS_COUNTS = ["tp", "fp", "fn", "tn"]  # pooled pixel counts: any pooled spec, after the fact
CLASS_COLUMNS = ["iteration", "class", "name", "iou", "acc", "dice", "biou", "bf1", "freq"]
CLASS_COLUMNS += CLASS_COUNTS


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
        if cfg.retrain.loss_group_size and not kwargs.get("sync"):
            kwargs.setdefault("group_size", cfg.retrain.loss_group_size)
    if name == "wce" and "weights" not in kwargs and "class_frequencies" not in kwargs:
        kwargs["class_frequencies"] = class_frequencies(cfg, num_classes)
    return build_loss(name, num_classes=num_classes, **kwargs)


def class_frequencies(cfg: RetrainConfig, num_classes: int) -> list[int]:
    """Pixels of each class in the training split (wce's median-frequency weights): the data
    check's scan, cached by file list and run before every retrain, or for a generated dataset
    (shapes) a count over its labels, which it holds in memory."""
    from data.check import check_dataset

    result = check_dataset(cfg.data.name, cfg.data.root, cfg.data.params, splits=("train",))
    if not result.in_memory:
        return list(result.splits[0].class_pixels.values())
    labels = build_dataset(cfg.data.name, cfg.data.root, "train", None, **cfg.data.params).labels
    return torch.bincount(labels[labels < num_classes].long(), minlength=num_classes).tolist()


def schedule_loss(loss_fn, cfg: RetrainConfig, model, epoch_iterations: int, start: int) -> None:
    """A loss with an epoch schedule (boundary's region weight): its epoch in loss calls, one a
    training iteration or two with an auxiliary head, unless the loss file sets epoch_calls,
    and the calls made before a resumed run's start."""
    if not hasattr(loss_fn, "epoch_calls"):
        return
    aux = getattr(model, "aux_head", None) is not None and cfg.retrain.fit.aux_weight > 0
    per_iteration = 2 if aux else 1
    if "epoch_calls" not in cfg.loss:
        loss_fn.epoch_calls = max(1, epoch_iterations) * per_iteration
    loss_fn.calls = start * per_iteration


def make_eval_set(cfg: RetrainConfig, rank: int = 0, world_size: int = 1):
    """This process's share of the evaluation split, whole images (predictions are resized
    back to the label size)."""
    settings = cfg.retrain
    eval_set = build_dataset(
        cfg.data.name,
        cfg.data.root,
        settings.eval_split,
        whole_image_transforms(scale=settings.eval_scale),
        **cfg.data.params,
    )
    return Subset(eval_set, range(rank, len(eval_set), world_size)) if world_size > 1 else eval_set


def evaluation_points(start: int, iterations: int, every: list[int]) -> list[int]:
    """The iterations after `start` where the loop stops to evaluate or checkpoint: multiples
    of each nonzero interval in `every`, and the last iteration."""
    points = {k for n in every if n for k in range(n, iterations, n) if k > start}
    return sorted(points | ({iterations} if start < iterations else set()))


def _due(iteration: int, every: int, iterations: int) -> bool:
    return iteration == iterations or bool(every and iteration % every == 0)


def class_table(per_class: dict, names: list, iteration: int) -> list[dict]:
    """An evaluation's per-class results (SegMetrics' per_class) as classes.csv rows."""
    keys = {"iou": "miou", "acc": "macc", "dice": "mdice", "biou": "biou", "bf1": "bf1"}
    return [
        {"iteration": iteration, "class": c, "name": str(name)}
        | {column: per_class[key][c] for column, key in keys.items()}
        | {column: per_class[column][c] for column in ["freq", *CLASS_COUNTS]}
        for c, name in enumerate(names)
    ]


def class_lines(rows: list[dict]) -> str:
    """The last evaluation per class, by name, in %."""
    width = max(len("class"), *(len(r["name"]) for r in rows))
    lines = [f"[retrain] {'class':<{width}}    IoU    Acc   BIoU    BF1"]
    for r in rows:
        values = " ".join(f"{100 * float(r[k]):6.2f}" for k in ("iou", "acc", "biou", "bf1"))
        lines.append(f"[retrain] {r['name']:<{width}} {values}")
    return "\n".join(lines)


def save_checkpoint(path: Path, model, optimizer, iteration: int, cfg: RetrainConfig) -> None:
    """A plain dict, written atomically by rank 0; it carries the resolved config it was trained
    with. Every rank calls it: the RNG states of all of them go in."""
    state = training_state(model, optimizer, iteration) | {"config": to_dict(cfg)}
    if process_rank()[0] == 0:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)


def train(run_dir: str | Path) -> dict | None:
    """Train (or continue) the run in `run_dir`; final.json's contents on rank 0."""
    run_dir = Path(run_dir)
    cfg = configs.load(run_dir / "config.yaml")
    settings, fit_cfg = cfg.retrain, cfg.retrain.fit
    device = init_process_group()
    rank, world_size = process_rank()

    train_set = build_train_set(cfg.data, settings)
    num_classes = train_set.num_classes
    eval_batches = eval_loader(make_eval_set(cfg, rank, world_size), settings.eval_batch_size)
    loss_fn = make_loss(cfg, num_classes)
    seed_everything(fit_cfg.seed)
    model = build_segnet(settings.model, num_classes, **settings.model_args)
    net, optimizer = setup_training(model, fit_cfg, device)
    if rank:  # the same weights everywhere (above), but each rank its own dropout masks
        seed_everything(fit_cfg.seed + rank)
    checkpoint = run_dir / CHECKPOINT
    start = load_training_state(checkpoint, model, optimizer) if checkpoint.is_file() else 0
    schedule_loss(loss_fn, cfg, model, len(train_set) // fit_cfg.batch_size, start)
    rows = [r for r in read_csv(run_dir / "metrics.csv") if int(r["iteration"]) <= start]
    class_rows = [r for r in read_csv(run_dir / "classes.csv") if int(r["iteration"]) <= start]
    names = list(getattr(train_set, "class_names", None) or range(num_classes))
    batches = train_batches(train_set, fit_cfg, device, start)
    specs = eval_specs(cfg)  # the searched metric spec (dice, ...), beside the standard metrics
    columns = [*METRIC_COLUMNS, *(spec.name for spec in specs)]

    started = time.perf_counter()
    every = [fit_cfg.eval_every, fit_cfg.checkpoint_every]
    for stop in evaluation_points(start, fit_cfg.iterations, every):
        train_steps(net, optimizer, loss_fn, batches, fit_cfg, device, start, stop)
        start = stop
        # evaluate before the checkpoint: a checkpoint at k means the evaluation at k is done
        if _due(stop, fit_cfg.eval_every, fit_cfg.iterations):
            results = evaluate(
                model,
                eval_batches,
                num_classes,
                device,
                prediction=settings.prediction,
                classes=settings.classes,
                drop_background=settings.drop_background,
                tolerance=settings.tolerance,
                specs=specs,
            )
            seconds = round(time.perf_counter() - started, 2)
            rows.append({"iteration": stop, "seconds": seconds})
            rows[-1].update({k: results[k] for k in columns})
            class_rows += class_table(results["per_class"], names, stop)
            if rank == 0:
                write_csv(run_dir / "metrics.csv", rows, ["iteration", "seconds", *columns])
                write_csv(run_dir / "classes.csv", class_rows, CLASS_COLUMNS)
                shown = "  ".join(f"{k} {100 * results[k]:.2f}" for k in METRICS)
                print(f"[retrain] eval at {stop}: {shown}", flush=True)
        if _due(stop, fit_cfg.checkpoint_every, fit_cfg.iterations):
            save_checkpoint(checkpoint, model, optimizer, stop, cfg)

    final = None
    if rank == 0 and class_rows:
        print(class_lines([r for r in class_rows if int(r["iteration"]) == start]), flush=True)
    if rank == 0:
        final = {**rows[-1], "processes": world_size, "loss": cfg.loss, "data": cfg.data.name}
        write_json(run_dir / "final.json", final)
    if world_size > 1:
        # DDP's reducer holds the process group: freed after destroy_process_group (at this
        # frame's end) gloo's worker thread and the main thread can deadlock at exit
        del net
        dist.destroy_process_group()
    return final


def init_process_group() -> torch.device:
    """Join torchrun's process group (nccl on GPUs, gloo on CPU); this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        # the machine's cores shared by its processes (torch would give each all of them)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, usable_cpus() // local))
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


if __name__ == "__main__":
    train(sys.argv[1])
