"""`./launch.sh retrain FILE [NUM_GPUS] [key=value ...] [--baseline ce]` and
`./launch.sh retrain --resume RUN_DIR`.

Checks the file, keys, GPUs, dataset, model and loss before anything is written, creates the
run folder, then trains in this process or, for NUM_GPUS > 1, in NUM_GPUS torchrun processes
(DDP: nccl on GPUs, gloo processes on CPU). `--baseline ce` adds the cross-entropy run with the
same settings (reused when a finished one exists) and the comparison table of SPEC A§6.1.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import data  # noqa: F401  (first: the torchvision compatibility import)
from experiments.check_data import check_before_start
from experiments.config import (
    REPO,
    ConfigError,
    build_train_set,
    fail,
    parse_overrides,
    preflight,
    take_num_gpus,
    to_yaml,
)
from results.files import comparison_markdown, new_run_folder, write_json, write_text
from retrain import config as configs
from retrain.config import RetrainConfig, find_file, resolve, target_metric
from retrain.train import make_eval_set, make_loss, train
from segnets import build_segnet
from surrogates import METRICS

RESULTS = REPO / "results" / "retrain"
USAGE = """./launch.sh retrain FILE [NUM_GPUS] [key=value ...] [--baseline ce] [--results DIR]
       ./launch.sh retrain --resume RUN_DIR

FILE: a search's export (<metric>_bezier.yaml), or a name in experiments/retrain/
(miou_bezier.yaml ... bf1_bezier.yaml, ce.yaml). NUM_GPUS: processes (default: every visible
GPU, one without); NUM_GPUS > 1 runs DDP (gloo processes on a CPU). --baseline ce: also train
cross-entropy with the same settings and compare. Keys: data=shapes|voc|cityscapes|auto and any
dotted key (retrain.fit.iterations=2000, retrain.prediction=rankdice, ...).
Details: docs/retrain.md."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./launch.sh retrain", usage=USAGE)
    parser.add_argument("words", nargs="*")
    parser.add_argument("--resume", metavar="RUN_DIR")
    parser.add_argument("--baseline", choices=["ce"])
    parser.add_argument("--results", default=str(RESULTS), help="folder of the run folders")
    parser.error = fail  # one line, exit 2
    return parser.parse_intermixed_args(argv)


def plan(args: argparse.Namespace) -> tuple[RetrainConfig, Path | None]:
    if args.resume:
        run_dir = Path(args.resume).resolve()
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "checkpoints").is_dir():
            raise ConfigError(
                f"{run_dir} is not a retrain run folder (no config.yaml and checkpoints/)"
            )
        if args.words:
            raise ConfigError("--resume takes no FILE or overrides; the run's config is used")
        if (run_dir / "final.json").is_file():
            raise ConfigError(f"{run_dir} has finished (final.json): nothing to resume")
        return configs.load(run_dir / "config.yaml"), run_dir
    words = list(args.words)
    if not words:
        raise ConfigError("missing FILE (a searched-loss yaml or a name in experiments/retrain/)")
    path = find_file(words.pop(0))
    processes = take_num_gpus(words)
    visible = torch.cuda.device_count()
    if processes and visible and processes > visible:
        raise ConfigError(f"NUM_GPUS={processes} but only {visible} GPU(s) are visible")
    cfg = resolve(path, parse_overrides(words))
    cfg.processes = processes or max(1, visible)
    return cfg, None


def check_builds(cfg: RetrainConfig) -> None:
    """Everything a process builds, once, before a run folder exists; then the data check of
    `./launch.sh check-data` on the splits the retrain reads (every broken file listed)."""

    def build() -> None:
        train_set = build_train_set(cfg.data, cfg.retrain)
        make_eval_set(cfg)
        build_segnet(cfg.retrain.model, train_set.num_classes, **cfg.retrain.model_args)
        make_loss(cfg, train_set.num_classes)

    preflight(build)  # a dataset that cannot be built at all: its reader's one line
    check_before_start(cfg.data, tuple(dict.fromkeys(("train", cfg.retrain.eval_split))), "retrain")
    # a loss group may span processes (SurrogateLoss gathers the per-image sums): only the
    # batch itself must split
    batch = cfg.retrain.fit.batch_size
    if batch % cfg.processes:
        raise ConfigError(
            f"retrain.fit.batch_size={batch} does not split over {cfg.processes} processes"
        )


def new_run_dir(cfg: RetrainConfig, results: Path) -> Path:
    run_dir = new_run_folder(results, f"{cfg.name}-{cfg.data.name}")
    (run_dir / "checkpoints").mkdir()
    write_text(run_dir / "config.yaml", to_yaml(cfg))
    return run_dir


def launch(cfg: RetrainConfig, run_dir: Path) -> dict:
    """Train in this process, or in cfg.processes torchrun processes; returns final.json."""
    device = "GPU" if torch.cuda.is_available() else "CPU"
    ddp = f", DDP over {cfg.processes} processes" if cfg.processes > 1 else ""
    print(f"[retrain] {cfg.name} on {cfg.data.name}, {device}{ddp}")
    print(f"[retrain] run folder: {run_dir}", flush=True)
    if cfg.processes == 1:
        train(run_dir)
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={cfg.processes}", "-m", "retrain.train", str(run_dir),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=REPO, env=env)
        if done.returncode != 0:
            raise SystemExit(f"error: the DDP processes failed (exit {done.returncode})")
    final = json.loads((run_dir / "final.json").read_text())
    shown = ", ".join(f"{k} {100 * float(final[k]):.2f}" for k in final_metrics(cfg, final))
    print(f"[retrain] done in {float(final['seconds']) / 60:.1f} min: {shown}")
    return final


def find_baseline(cfg: RetrainConfig, results: Path) -> Path | None:
    """A finished CE run with exactly these data and training settings."""
    for config_path in sorted(results.glob("*/config.yaml")):
        other = configs.load(config_path)
        same = (other.data, other.retrain, other.processes) == (
            cfg.data,
            cfg.retrain,
            cfg.processes,
        )
        if same and other.loss == {"name": "ce"} and (config_path.parent / "final.json").is_file():
            return config_path.parent
    return None


def final_metrics(cfg: RetrainConfig, final: dict) -> list[str]:
    """The six metrics, and the metric spec's column when the evaluation has it."""
    spec = cfg.retrain.metric_spec.get("name")
    return [*METRICS, *([spec] if spec and spec not in METRICS and spec in final else [])]


def comparison(target: str | None, finals: dict[str, dict], metrics: list[str]) -> dict:
    """comparison.json: `metrics` of each loss's final evaluation, the target marked."""
    losses = {name: {m: float(final[m]) for m in metrics} for name, final in finals.items()}
    return {"target": target, "metrics": list(metrics), "losses": losses}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg, resume_dir = plan(args)
        check_builds(cfg)
    except ConfigError as error:
        fail(str(error))
    results = Path(args.results)
    run_dir = resume_dir or new_run_dir(cfg, results)
    final = launch(cfg, run_dir)
    if args.baseline:
        baseline_cfg = RetrainConfig(**{**vars(cfg), "loss": {"name": "ce"}, "name": "ce"})
        baseline_dir = find_baseline(baseline_cfg, results)
        if baseline_dir is None:
            baseline_dir = new_run_dir(baseline_cfg, results)
            print("[retrain] baseline: cross-entropy with identical settings")
            launch(baseline_cfg, baseline_dir)
        else:
            print(f"[retrain] baseline: reusing {baseline_dir}")
        base = json.loads((baseline_dir / "final.json").read_text())
        finals = {"ce": base, cfg.name: final}
        metrics = [m for m in final_metrics(cfg, final) if m in base]
        compared = comparison(target_metric(cfg), finals, metrics)
        write_json(run_dir / "comparison.json", compared)
        table = comparison_markdown(compared)
        write_text(run_dir / "comparison.md", table)
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
