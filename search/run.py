"""`./launch.sh search METRIC [NUM_GPUS] [key=value ...]` and `./launch.sh search --resume RUN_DIR`.

Resolves the config, checks everything that can be checked before anything is written (metric,
GPUs, keys, dataset, model, loss), creates the run folder, starts or joins Ray and runs the
`StepSearcher` over `proxy_trial` trials with Ray Tune. Bad input: one line on stderr, exit 2.
"""

import argparse
import json
import os
import sys
import threading
from pathlib import Path

import torch

import data  # noqa: F401  (first: the torchvision compatibility import)
from experiments.check_data import check_before_start
from experiments.config import (
    REPO,
    ConfigError,
    fail,
    parse_overrides,
    preflight,
    take_num_gpus,
    to_yaml,
)
from results.files import new_run_folder, write_text
from search import config as configs
from search.config import Config, target
from search.space import initial_raw
from search.trial import build_datasets, build_loss, warm_up_kernels
from segnets import build_segnet
from segnets.engine import usable_cpus
from surrogates import METRICS, SurrogateLoss, list_specs

RESULTS = REPO / "results" / "search"
USAGE = """./launch.sh search METRIC [NUM_GPUS] [key=value ...] [--address ADDR] [--results DIR]
       ./launch.sh search --resume RUN_DIR [--address ADDR]

METRIC: miou fwiou macc gacc biou bf1 (the paper's), a metric spec's name (dice fbeta tversky
precision recall specificity balanced_accuracy miou_image dice_image) or a spec file
(my_metric.yaml, a path from the repository root; search.metric_args={beta: 1} sets a spec's
constants). NUM_GPUS: GPUs to use (default: every visible GPU, search.models_per_gpu trials on
each); without a GPU, CPU trials with one thread each, at most one per usable core (NUM_GPUS
is capped there). Keys: data=shapes|voc|cityscapes|auto and any
dotted key (ppo.steps=4, proxy.fit.iterations=300, search.rungs=1, search.seed=1, ...).
Details: docs/search.md."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./launch.sh search", usage=USAGE, add_help=True)
    parser.add_argument("words", nargs="*")
    parser.add_argument("--resume", metavar="RUN_DIR")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""))
    parser.add_argument("--results", default=str(RESULTS), help="folder of the run folders")
    parser.error = fail  # one line, exit 2
    return parser.parse_intermixed_args(argv)


def plan(args: argparse.Namespace) -> tuple[Config, int, Path | None]:
    """(config, GPUs to use, run folder to resume or None); raises ConfigError for bad input."""
    if args.resume:
        run_dir = Path(args.resume).resolve()
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "tune").is_dir():
            raise ConfigError(f"{run_dir} is not a search run folder (no config.yaml and tune/)")
        if (run_dir / "summary.json").is_file():
            raise ConfigError(f"{run_dir} is a finished search; nothing to resume")
        if args.words:
            raise ConfigError("--resume takes no METRIC or overrides; the run's config is used")
        cfg = configs.load(run_dir / "config.yaml")
        cfg.ray.address = args.address or cfg.ray.address
        num_gpus = _gpus(None, cfg)
        cap_cpu_slots(cfg, num_gpus)
        return cfg, num_gpus, run_dir
    words = list(args.words)
    if not words:
        names = ", ".join([*METRICS, *(n for n in list_specs() if n not in METRICS)])
        raise ConfigError(f"missing METRIC; one of {names}, or a metric spec file (.yaml)")
    metric = words.pop(0)  # checked by configs.resolve: a metric, a spec name or a spec file
    num_gpus = take_num_gpus(words)
    cfg = configs.resolve(metric, parse_overrides(words))
    cfg.ray.address = args.address or cfg.ray.address
    if num_gpus and not torch.cuda.device_count() and not cfg.ray.address:
        cfg.search.cpu_slots, num_gpus = num_gpus, 0  # no GPU here: NUM_GPUS counts CPU slots
    num_gpus = _gpus(num_gpus, cfg)
    cap_cpu_slots(cfg, num_gpus)
    return cfg, num_gpus, None


def cap_cpu_slots(cfg: Config, num_gpus: int) -> None:
    """A local CPU search runs at most one trial per usable core (search.cpu_slots, default
    all of them): more would only share the cores, and a trial's result does not depend on
    what runs beside it (the same rewards, later). Says so when it lowers what was asked."""
    if num_gpus or cfg.ray.address:
        return
    usable, asked = usable_cpus(), cfg.search.cpu_slots
    cfg.search.cpu_slots = min(asked or usable, usable)
    if asked > usable:
        print(f"[search] {asked} CPU slots asked, {usable} usable cores: {usable} trials at once")


def _gpus(requested: int | None, cfg: Config) -> int:
    if cfg.ray.address:  # a cluster: its own resources decide
        return requested or 0
    visible = torch.cuda.device_count()
    if requested and visible and requested > visible:
        raise ConfigError(f"NUM_GPUS={requested} but only {visible} GPU(s) are visible")
    return min(requested or visible, visible)


def check_builds(cfg: Config) -> SurrogateLoss:
    """Build what every trial builds, once: a missing dataset or a bad model argument is an
    error now rather than a failed trial later; the shapes or image cache and the compiled loss
    kernels are made here once, before the trials that share them. Then the data check of
    `./launch.sh check-data` on the splits the search reads: every broken file listed now, not
    a failed trial (or a wrong reward) later. Returns the loss built."""
    built = {}

    def build() -> None:
        train_set, _ = build_datasets(cfg)
        build_segnet(cfg.proxy.model, train_set.num_classes, **cfg.proxy.model_args)
        built["loss"] = build_loss(
            cfg, initial_raw(target(cfg.search), cfg.search.ce_mix), train_set.num_classes
        )

    preflight(build)  # a dataset that cannot be built at all: its reader's one line
    check_before_start(cfg.data, ("train", "val"), "search")
    return built["loss"]


def compile_while(loss_fn, cfg: Config) -> threading.Thread:
    """The loss kernels compiled in a thread while Ray starts (both take ~10 s), so that the
    trials find them in inductor's on-disk cache (search.trial.warm_up_kernels)."""

    def run() -> None:
        seconds = warm_up_kernels(cfg, loss_fn)
        if seconds:
            print(f"[search] compiled the loss kernels for all trials in {seconds:.0f}s")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def report(run_dir: Path) -> int:
    summary_path = run_dir / "summary.json"
    if (run_dir / "failed.json").is_file():
        error = json.loads((run_dir / "failed.json").read_text())["error"]
        print(f"error: the search stopped: {error}", file=sys.stderr)
        return 1
    if not summary_path.is_file():
        print(
            f"[search] stopped before the end; continue with: ./launch.sh search --resume {run_dir}"
        )
        return 130
    s = json.loads(summary_path.read_text())
    minutes = s["seconds"] / 60
    print(f"[search] done: {s['trials']} trials ({s['failed']} failed) in {minutes:.1f} min")
    versus = ", ".join(f"{name} {100 * value:.2f}" for name, value in s["baselines"].items())
    print(
        f"[search] export: {s['best']}, {s['metric']} {100 * s['reward']:.2f} over {s['seeds']} "
        f"seed(s) vs {versus or 'no baseline'}"
    )
    leader = s.get("leader", s["best"])
    if leader != s["best"]:  # search.confirm_margin kept the final mean
        lead = 100 * (s["candidates"][leader] - s["reward"])
        print(
            f"[search] {leader} led by {lead:.2f}, within the seed noise "
            f"({100 * s['seed_noise']:.2f} per seed): the export is the {s['best']}"
        )
    confirmed = s.get("confirm_iterations", 0)
    extra = f" + {confirmed} on the confirmation's network" if confirmed else ""
    hours = f", {s['trial_hours']:.2f} trial-hours" if "trial_hours" in s else ""
    if s.get("gpu_hours"):
        hours += f" ({s['gpu_hours']:.2f} GPU-hours)"
    print(f"[search] {s['iterations']} proxy training iterations{extra}{hours}")
    if s["loss"] == "ce":
        print("[search] no searched loss beat cross-entropy: the export retrains with CE")
    elif s["loss"] != "surrogate":  # a metric spec's hand-made loss (search.steps)
        print(f"[search] no searched loss beat the {s['best']}: the export retrains with it")
    else:
        print(f"[search] theta: {[round(v, 4) for v in s['theta']]}")
    print(f"[search] exported {s['export']}")
    print(f"[search] retrain: ./launch.sh retrain {s['export']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg, num_gpus, resume_dir = plan(args)
        loss_fn = check_builds(cfg)
    except ConfigError as error:
        fail(str(error))
    run_dir = resume_dir or new_run_folder(args.results, f"{cfg.search.metric}-{cfg.data.name}")
    if not resume_dir:
        write_text(run_dir / "config.yaml", to_yaml(cfg))
    print(
        f"[search] {cfg.search.metric} on {cfg.data.name} ({cfg.data.root}), {cfg.ppo.steps} steps "
        f"x {cfg.ppo.samples} samples, {cfg.proxy.model} proxy, {cfg.proxy.fit.iterations} it"
    )
    print(f"[search] run folder: {run_dir}")
    from search.searcher import run_search  # Ray, once the input is known to be good

    compiling = compile_while(loss_fn, cfg)
    run_search(cfg, num_gpus, run_dir, resume_dir is not None, before_trials=compiling.join)
    return report(run_dir)


if __name__ == "__main__":
    sys.exit(main())
