"""The search's configuration: typed dataclasses, filled in layers (DESIGN.md, Configs):

    defaults below  <-  experiments/search/<metric>.yaml  <-  experiments/data/<dataset>.yaml
                    <-  key=value overrides on the command line

The dataset profile comes after the metric file because it sizes what depends on the data:
image size, boundary tolerance in pixels, the proxy network and the budget. Its `retrain:`
section also sets `confirm:`, the training of the confirmation round at
search.confirm_fidelity > 0 (the retrain's network and crops, a fraction of its iterations).
An unknown key or a wrong type or a value out of its range is a one-line `ConfigError` naming
it (experiments/config.py holds the layering both stages share).
"""

import functools
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments.config import (
    EXPERIMENTS,
    REPO,
    ConfigError,
    DataConfig,
    FullSizeSettings,
    TrainSettings,
    check_ranges,
    dataset_choice,
    merge_file,
    set_key,
)
from experiments.config import load as load_file
from search.controllers import list_controllers
from search.ppo import PPOConfig
from segnets.engine import FitConfig
from surrogates import METRIC_COLUMNS, METRICS, MetricSpec, list_specs, load_spec, spec_from_dict
from surrogates.checks import unknown_name

# free-form mappings: the dataset or model constructor checks the first three's keys, the
# metric spec its constants and its own keys
OPEN_MAPPINGS = (
    "data.params",
    "proxy.model_args",
    "confirm.model_args",
    "search.metric_args",
    "search.metric_spec",
)


@dataclass
class ProxyConfig(TrainSettings):
    """The proxy task of a trial (reference A§5: R50 DeepLabV3+, 128 px crops, 1000 iterations)."""

    model_args: dict[str, Any] = field(
        default_factory=lambda: {
            "backbone": "resnet50",
            "output_stride": 8,
            "aux": True,
            "pretrained_backbone": "imagenet",  # from scratch, 1000 iterations score noise
        }
    )
    crop_size: int = 128
    scale: list[int] | None = field(default_factory=lambda: [512, 128])
    eval_scale: list[int] | None = field(default_factory=lambda: [512, 128])  # reward images
    eval_batch_size: int = 32
    fit: FitConfig = field(
        default_factory=lambda: FitConfig(iterations=1000, batch_size=32, lr=0.02, log_every=0)
    )
    eval_crop: int | None = 128  # reward images centre-cropped to this size; None: whole
    cache_images: bool = True  # decoded once per machine for all trials (data/cache.py)


@dataclass
class ConfirmSettings(FullSizeSettings):
    """The confirmation round's training at search.confirm_fidelity = f > 0: the retrain's
    network, crops and schedule (the profile's `retrain:` section) over f x its iterations,
    scored on the reward split as the retrain evaluates, whole images at eval_scale."""


@dataclass
class SearchConfig:
    # one of the paper's six (miou fwiou macc gacc biou bf1), or the name of the metric spec
    # below (docs/metrics.md): a built-in spec (dice, fbeta, ...) or a spec YAML file's name
    metric: str = "miou"
    metric_args: dict[str, Any] = field(default_factory=dict)  # a spec's constants ({beta: 1})
    # derived at resolve: the searched spec, in full (what --resume and the export read); empty
    # for the paper's six, which keep their hand-written surrogates
    metric_spec: dict[str, Any] = field(default_factory=dict)
    controller: str = "ppo"  # ppo | random | cmaes | tpe (search/controllers.py)
    random_uniform: bool = False  # random: uniform on [0,1]^D instead of the initial policy
    seed: int = 0  # controller sampling and the proxy training seed shared by all samples
    reward_split: str = "holdout"  # holdout (a held-out part of train) or val (the reference)
    tolerance: int = 5  # boundary tolerance in pixels (surrogate and reward)
    drop_background: bool | None = None  # the loss's; None = the metric's (biou True, bf1 False)
    # the reward's biou / bf1 leave background out, as the dataset's evaluation does (VOC: True;
    # the reference's search evaluator hard-codes True, SPEC A§1.5)
    reward_drop_background: bool = True
    region_weight: float = 0.0  # boundary metrics: + w * (1 - soft mIoU), SPEC B2
    # loss = (1 - l) * surrogate + l * cross-entropy: off (l = 0, the reference objective), a
    # fixed l in [0, 1], or searched (one more search dimension, starting at 0.25)
    ce_mix: Any = "off"  # YAML reads off as false; check() makes it "off", "searched" or a float
    failure_reward: float | None = None  # None = the worst reward of the failed trial's step
    # successive halving inside each step: rung 1 trains every sample for iterations /
    # reduction^(rungs - 1), each later rung continues the best 1/reduction (and the policy
    # mean) from their checkpoints, reduction times longer; the last rung is the full budget
    # (rungs 1 = every sample trains the full budget, the reference). 0 = auto: 3 rungs when a
    # step's samples exceed the trials that run at once, else 1 (steps.halving_rungs)
    rungs: int = 0
    reduction: int = 3
    confirm_top_k: int = 1  # confirmation round: the final mean + the k best samples ...
    confirm_seeds: int = 2  # ... each trained with this many new seeds ...
    # ... on the proxy (0, as the steps) or, f in (0, 1], on the retrain's network and crops for
    # f x its iterations (confirm:): a fidelity that ranks good losses as the retrain does
    confirm_fidelity: float = 0.0
    confirm_identity: bool = False  # ... and the identity curve (the plain soft metric)
    # the export is the final mean unless a candidate's mean confirmed reward beats it by more
    # than this many standard errors of the difference (seed noise pooled over the round);
    # 0: the best mean confirmed reward
    confirm_margin: float = 1.0
    # cross-entropy and the metric's published preset (asl-voc-<metric>) are candidates too:
    # the export is never worse on the proxy, beyond seed noise, than the loss a user would
    # have used anyway
    confirm_baselines: bool = True
    models_per_gpu: int = 4  # proxy trials sharing one GPU
    cpu_slots: int = 0  # without GPUs: trials at once (0 = one per core; NUM_GPUS sets it)
    faults: str = ""  # tests only: "STEP:SAMPLE=raise|nan,..." makes those trials fail


@dataclass
class RayConfig:
    address: str = ""  # "" = a local Ray; or an existing cluster (also RAY_ADDRESS)
    dashboard_port: int = 8265
    dashboard: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def resolve(metric: str, overrides: dict[str, str], data_root: str | None = None) -> Config:
    """The full configuration of a search for `metric` (one of METRICS, a built-in spec name
    or a spec YAML path) with command-line overrides.

    `data=NAME` picks the dataset profile (default auto); every other key is a dotted path."""
    overrides = dict(overrides)
    config = OmegaConf.structured(Config)
    if metric in METRICS:  # the paper's six have search files; a spec searches with defaults
        merge_file(config, EXPERIMENTS / "search" / f"{metric}.yaml", OPEN_MAPPINGS)
    name, root = dataset_choice(overrides.pop("data", None), overrides.get("data.root"), data_root)
    profile = EXPERIMENTS / "data" / f"{name}.yaml"
    merge_file(config, profile, OPEN_MAPPINGS, skip=("retrain",))
    merge_file(config, profile, OPEN_MAPPINGS, layer={"confirm": confirm_layer(profile)})
    for key, value in overrides.items():
        set_key(config, key, value, OPEN_MAPPINGS)
    config.data.name = name
    config.data.root = str(Path(config.data.root or root).resolve())
    result: Config = OmegaConf.to_object(config)
    spec = resolve_spec(metric, result.search.metric_args)
    result.search.metric = metric if spec is None else spec.name
    result.search.metric_spec = {} if spec is None else spec.to_dict()
    check(result)
    return result


def resolve_spec(metric: str, constants: dict) -> MetricSpec | None:
    """None for the paper's six (their hand-written surrogates and search files, unchanged),
    else the metric spec METRIC names with search.metric_args as its constants."""
    if metric in METRICS:
        if constants:
            raise ConfigError(f"search.metric_args: {metric} has no constants, got {constants}")
        return None
    if not str(metric).endswith((".yaml", ".yml")) and metric not in list_specs():
        valid = sorted({*METRICS, *list_specs()})
        error = unknown_name("metric", metric, valid)
        raise ConfigError(f"{error} (or a metric spec file ending in .yaml)")
    if metric not in list_specs():  # a file, from the repository root as launch.sh runs
        metric = Path(metric) if Path(metric).is_absolute() else REPO / metric
    try:
        spec = load_spec(metric, **constants)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    # a column of trials.csv must mean one thing: a spec may take a metric's name only when it
    # is that metric's own built-in spec (miou_image: SegMetrics' column is its value)
    if spec.name in (*METRIC_COLUMNS, *TRIAL_COLUMNS) and not _is_builtin(spec):
        raise ConfigError(
            f"metric spec name '{spec.name}' is taken (a built-in metric or a trials.csv "
            "column); give the spec another name (its file's name, or a name: key)"
        )
    return spec


# trials.csv's columns beside the metrics (search/steps.py), which a spec's name may not take
TRIAL_COLUMNS = (
    "trial_id", "phase", "step", "sample", "rung", "iterations", "trained", "fidelity",
    "candidate", "seed", "status", "reward", "reward_used", "seconds", "gpu_share", "node",
    "reason", "ce_weight", "iteration",
)  # fmt: skip


def _is_builtin(spec: MetricSpec) -> bool:
    if spec.name not in list_specs():
        return False
    try:
        return spec == load_spec(spec.name, **spec.constants)
    except ValueError:  # constants the built-in does not have
        return False


@functools.lru_cache(maxsize=16)
def _spec_of(text: str) -> MetricSpec:
    return spec_from_dict(json.loads(text))


def target(search: SearchConfig) -> "str | MetricSpec":
    """The searched metric as SurrogateLoss and search/space.py take it: a paper metric's name,
    or the MetricSpec of search.metric_spec (parsed and checked once per process)."""
    if not search.metric_spec:
        return search.metric
    return _spec_of(json.dumps(search.metric_spec, sort_keys=True))


def target_specs(search: SearchConfig) -> list[MetricSpec]:
    """The specs the reward's SegMetrics computes: the searched spec, unless SegMetrics
    computes its column already (miou_image)."""
    spec = target(search)
    return [spec] if isinstance(spec, MetricSpec) and spec.name not in METRIC_COLUMNS else []


# a hand-made baseline loss takes the spec's constants of the same meaning (tversky: alpha on
# fp, beta on fn, as the tversky spec)
BASELINE_CONSTANTS = {"tversky": ("alpha", "beta")}


def baseline_args(search: SearchConfig, loss: str) -> dict:
    """Keyword arguments of a hand-made baseline loss for the searched spec (search.steps)."""
    constants = search.metric_spec.get("constants") or {}
    return {key: constants[key] for key in BASELINE_CONSTANTS.get(loss, ()) if key in constants}


def reward_columns(search: SearchConfig) -> list[str]:
    """The metric columns of a trial's result: the standard ones and the searched spec's."""
    return [*METRIC_COLUMNS, *(spec.name for spec in target_specs(search))]


def confirm_layer(profile: Path) -> dict:
    """The profile's `retrain:` keys that describe a training (not its evaluation protocol)."""
    if not profile.is_file():
        return {}
    section = OmegaConf.to_container(OmegaConf.load(profile)).get("retrain") or {}
    keys = {f.name for f in fields(ConfirmSettings)}
    return {key: value for key, value in section.items() if key in keys}


def confirm_iterations(config: Config) -> int:
    """Iterations of a confirmation trial: the proxy's at fidelity 0, else f x the retrain's."""
    fidelity = config.search.confirm_fidelity
    if not fidelity:
        return config.proxy.fit.iterations
    return max(1, round(fidelity * config.confirm.fit.iterations))


def check(config: Config) -> None:
    """Values that are well typed but wrong: names, choices, ranges (experiments.config)."""
    search = config.search
    if search.metric not in METRICS and not search.metric_spec:
        raise ConfigError(str(unknown_name("metric", search.metric, METRICS)))
    if search.metric_spec and target(search).name != search.metric:
        raise ConfigError(f"search.metric_spec is named {target(search).name}, not {search.metric}")
    if search.controller not in list_controllers():
        raise ConfigError(str(unknown_name("controller", search.controller, list_controllers())))
    search.ce_mix = _ce_mix(search.ce_mix)
    if search.reward_split not in ("holdout", "val"):
        raise ConfigError(f"search.reward_split must be holdout or val, got {search.reward_split}")
    check_ranges(config)
    if search.rungs and config.proxy.fit.iterations < search.reduction ** (search.rungs - 1):
        raise ConfigError(
            f"search.rungs={search.rungs} with search.reduction={search.reduction} leaves the "
            f"first rung less than 1 of proxy.fit.iterations={config.proxy.fit.iterations}"
        )


def _ce_mix(value: Any) -> str | float:
    if value in (False, "off", "searched"):
        return value or "off"
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise ConfigError(f"search.ce_mix must be off, searched or a number in [0, 1], got {value}")


def load(path: str | Path) -> Config:
    """The resolved config.yaml of a search run folder."""
    return load_file(path, Config, OPEN_MAPPINGS)
