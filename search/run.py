"""`./launch.sh search METRIC [NUM_GPUS] [key=value ...]` and `./launch.sh search --resume RUN_DIR`.

Resolves the config, checks everything that can be checked before anything is written (metric,
GPUs, keys, dataset, model, loss), creates the run folder, starts or joins Ray and runs the
`StepSearcher` over `proxy_trial` trials with Ray Tune. Bad input: one line on stderr, exit 2.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import data  # noqa: F401  (first: the torchvision compatibility import)
from search import config as configs
from search.config import Config, ConfigError
from search.searcher import StepSearcher, initial_raw, raw_space, write_atomic
from search.trial import build_datasets, build_loss, proxy_trial
from segnets import build_segnet
from surrogates import METRICS
from surrogates.checks import unknown_name

# Tune's own tables would interleave with our progress lines; verbose=0 silences the old reporter
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
RESULTS = configs.REPO / "results" / "search"
USAGE = """./launch.sh search METRIC [NUM_GPUS] [key=value ...] [--address ADDR]
       ./launch.sh search --resume RUN_DIR [--address ADDR]

METRIC: miou fwiou macc gacc biou bf1. NUM_GPUS: GPUs to use (default: all visible; without a
GPU: CPU trials at once, default one per core). Keys: data=shapes|voc|cityscapes|auto, any
dotted key of the config (ppo.steps=4, proxy.fit.iterations=300, search.seed=1, ...)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./launch.sh search", usage=USAGE, add_help=True)
    parser.add_argument("words", nargs="*")
    parser.add_argument("--resume", metavar="RUN_DIR")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""))
    parser.add_argument("--results", default=str(RESULTS), help="folder of the run folders")
    parser.error = lambda message: _fail(message)  # one line, exit 2
    return parser.parse_intermixed_args(argv)


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
        return cfg, _gpus(None, cfg), run_dir
    words = list(args.words)
    if not words:
        raise ConfigError("missing METRIC; one of " + ", ".join(METRICS))
    metric = words.pop(0)
    if metric not in METRICS:
        raise ConfigError(str(unknown_name("metric", metric, METRICS)))
    num_gpus = configs.take_num_gpus(words)
    cfg = configs.resolve(metric, configs.parse_overrides(words))
    cfg.ray.address = args.address or cfg.ray.address
    if num_gpus and not torch.cuda.device_count() and not cfg.ray.address:
        cfg.search.cpu_slots, num_gpus = num_gpus, 0  # no GPU here: NUM_GPUS counts CPU slots
    return cfg, _gpus(num_gpus, cfg), None


def _gpus(requested: int | None, cfg: Config) -> int:
    if cfg.ray.address:  # a cluster: its own resources decide
        return requested or 0
    visible = torch.cuda.device_count()
    if requested and visible and requested > visible:
        raise ConfigError(f"NUM_GPUS={requested} but only {visible} GPU(s) are visible")
    return min(requested or visible, visible)


def check_runs(cfg: Config) -> None:
    """Build what every trial builds, once: a missing dataset or a bad model argument is an
    error now rather than a failed trial later (and the shapes cache is made before trials)."""
    try:
        train_set, _ = build_datasets(cfg)
        build_segnet(cfg.proxy.model, train_set.num_classes, **cfg.proxy.model_args)
        build_loss(cfg, initial_raw(cfg.search.metric), train_set.num_classes)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise ConfigError(str(error).splitlines()[0]) from None


def start_ray(cfg: Config, num_gpus: int) -> None:
    import ray

    if cfg.ray.address:
        ray.init(address=cfg.ray.address, logging_level="WARNING", log_to_driver=False)
        print(f"[search] joined the Ray cluster at {cfg.ray.address}: {ray.cluster_resources()}")
        return
    context = ray.init(
        num_cpus=cfg.search.cpu_slots or os.cpu_count(),  # one trial per CPU
        num_gpus=num_gpus,
        include_dashboard=cfg.ray.dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=cfg.ray.dashboard_port,
        logging_level="WARNING",
        log_to_driver=False,
    )
    if cfg.ray.dashboard and context.dashboard_url:
        print(f"[search] Ray dashboard: http://{context.dashboard_url}")


def trial_resources(cfg: Config, num_gpus: int) -> tuple[dict, int]:
    """(resources of one trial, how many trials fit at once)."""
    import ray

    available = ray.cluster_resources()
    gpus = num_gpus or int(available.get("GPU", 0))
    if gpus:
        per_gpu = cfg.search.models_per_gpu
        return {"cpu": 1, "gpu": 1 / per_gpu}, gpus * per_gpu
    return {"cpu": 1}, max(1, int(available.get("CPU", 1)))


def run(cfg: Config, num_gpus: int, run_dir: Path, resume: bool) -> int:
    from ray import tune

    start_ray(cfg, num_gpus)
    resources, slots = trial_resources(cfg, num_gpus)
    trainable = tune.with_resources(tune.with_parameters(proxy_trial, cfg=cfg), resources)
    if resume:
        tuner = tune.Tuner.restore(str(run_dir / "tune"), trainable, resume_errored=True)
    else:
        searcher = StepSearcher(cfg, run_dir)
        tuner = tune.Tuner(
            trainable,
            param_space=raw_space(searcher.dims),  # given to the searcher by Tune
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=-1,
                # also lets Tune start that many trials at once (a custom searcher gets 1)
                max_concurrent_trials=slots,
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(run_dir), verbose=0),
        )
    tuner.fit()
    return report(run_dir)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


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
    print(
        f"[search] best: {s['best']}, {s['metric']} {100 * s['reward']:.2f} over {s['seeds']} "
        f"seed(s) vs identity curve {100 * s['identity_reward']:.2f}"
    )
    print(f"[search] theta: {[round(v, 4) for v in s['theta']]}")
    print(f"[search] exported {s['export']}")
    print(f"[search] retrain: ./launch.sh retrain {s['export']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg, num_gpus, resume_dir = plan(args)
        check_runs(cfg)
    except ConfigError as error:
        _fail(str(error))
    if num_gpus:
        slots = num_gpus * cfg.search.models_per_gpu
        print(f"[search] {num_gpus} GPU(s), {cfg.search.models_per_gpu} proxy models per GPU")
    else:
        slots = cfg.search.cpu_slots or os.cpu_count()
        if not cfg.ray.address:
            print(f"[search] no GPU: trials run on CPU, one thread each, {slots} at a time")
    name = f"{cfg.search.metric}-{cfg.data.name}"
    run_dir = resume_dir or configs.new_run_folder(Path(args.results), name)
    if not resume_dir:
        write_atomic(run_dir / "config.yaml", configs.to_yaml(cfg))
    print(
        f"[search] {cfg.search.metric} on {cfg.data.name} ({cfg.data.root}), {cfg.ppo.steps} steps "
        f"x {cfg.ppo.samples} samples, {cfg.proxy.model} proxy, {cfg.proxy.fit.iterations} it"
    )
    print(f"[search] run folder: {run_dir}")
    return run(cfg, num_gpus, run_dir, resume=resume_dir is not None)


if __name__ == "__main__":
    sys.exit(main())
