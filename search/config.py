"""The search's configuration: typed dataclasses, filled in layers (DESIGN.md, Configs):

    defaults below  <-  experiments/search/<metric>.yaml  <-  experiments/data/<dataset>.yaml
                    <-  key=value overrides on the command line

The dataset profile comes after the metric file because it sizes what depends on the data:
image size, boundary tolerance in pixels, the proxy network and the budget. An unknown key or
a wrong type is a one-line `ConfigError` naming it.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from search.controllers import CONTROLLERS
from search.ppo import PPOConfig
from segnets.engine import FitConfig
from surrogates.checks import unknown_name

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
# free-form argument mappings, whose keys the dataset or model constructor checks
OPEN_MAPPINGS = ("data.params", "proxy.model_args")


class ConfigError(ValueError):
    """A bad command line, file or key; the launcher prints it in one line and exits 2."""


@dataclass
class DataConfig:
    name: str = "auto"  # shapes | voc | cityscapes | auto (VOC, else Cityscapes, else shapes)
    root: str = ""  # "" = <repo>/data
    params: dict[str, Any] = field(default_factory=dict)  # dataset arguments (shapes: size ...)


@dataclass
class ProxyConfig:
    """The proxy task of a trial (reference A§5: R50 DeepLabV3+, 128 px crops, 1000 iterations)."""

    model: str = "deeplabv3plus"
    model_args: dict[str, Any] = field(
        default_factory=lambda: {"backbone": "resnet50", "output_stride": 8, "aux": True}
    )
    crop_size: int = 128
    scale: list[int] | None = field(default_factory=lambda: [512, 128])  # None: no rescale
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    photometric: bool = True
    cat_max_ratio: float = 0.75  # crops where one class covers >= 75 % are redrawn (A§5)
    eval_scale: list[int] | None = field(default_factory=lambda: [512, 128])  # reward images
    eval_crop: int | None = 128
    eval_batch_size: int = 32
    fit: FitConfig = field(
        default_factory=lambda: FitConfig(iterations=1000, batch_size=32, lr=0.02, log_every=0)
    )


@dataclass
class SearchConfig:
    metric: str = "miou"
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
    failure_reward: float | None = None  # None = the worst reward of the failed trial's step
    confirm_top_k: int = 3  # confirmation round: the final mean + the k best samples ...
    confirm_seeds: int = 2  # ... each trained with this many new seeds
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
    ppo: PPOConfig = field(default_factory=PPOConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def parse_overrides(words: list[str]) -> dict[str, str]:
    overrides = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got '{word}'")
        overrides[key] = value
    return overrides


def take_num_gpus(words: list[str]) -> int | None:
    """Pop the optional NUM_GPUS word that follows METRIC or FILE (None when absent)."""
    if not words or "=" in words[0]:
        return None
    text = words.pop(0)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"NUM_GPUS must be a positive integer, got '{text}'")
    return int(text)


def new_run_folder(results: Path, name: str) -> Path:
    """results/<name>-<timestamp>, with a -2, -3 ... suffix: a run folder is never overwritten."""
    base = results / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def resolve(metric: str, overrides: dict[str, str], data_root: str | None = None) -> Config:
    """The full configuration of a search for `metric` with command-line overrides.

    `data=NAME` picks the dataset profile (default auto); every other key is a dotted path."""
    overrides = dict(overrides)
    config = OmegaConf.structured(Config)
    merge_file(config, EXPERIMENTS / "search" / f"{metric}.yaml", OPEN_MAPPINGS)
    name, root = dataset_choice(overrides.pop("data", None), overrides.get("data.root"), data_root)
    merge_file(config, EXPERIMENTS / "data" / f"{name}.yaml", OPEN_MAPPINGS, skip=("retrain",))
    for key, value in overrides.items():
        set_key(config, key, value, OPEN_MAPPINGS)
    config.data.name = name
    config.data.root = str(Path(config.data.root or root).resolve())
    config.search.metric = metric
    result: Config = OmegaConf.to_object(config)
    check(result)
    return result


def dataset_choice(name: str | None, root: str | None, default_root: str | None) -> tuple:
    """(dataset name with auto resolved, data root) for `data=NAME` and `data.root=...`."""
    import data as datasets  # the dataset registry; imported here to keep this module light

    name = name or "auto"
    root = root or default_root or str(datasets.DEFAULT_ROOT)
    if name not in ("auto", *datasets.list_datasets()):
        raise ConfigError(str(unknown_name("dataset", name, ["auto", *datasets.list_datasets()])))
    return datasets.resolve_dataset(name, root), root


def merge_file(
    config,
    path: Path,
    open_keys: tuple[str, ...],
    layer: dict | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Merge a YAML layer (the file, or `layer` read from it); a layer's free-form mappings
    (open_keys) replace, not merge. `skip`: top-level sections meant for the other stage (a
    dataset profile holds both the search's proxy and the retrain settings)."""
    if layer is None and not path.is_file():
        return
    try:
        layer = OmegaConf.load(path) if layer is None else OmegaConf.create(layer)
        for key in skip:
            layer.pop(key, None)
        for key in open_keys:
            if OmegaConf.select(layer, key) is not None:
                OmegaConf.update(config, key, {}, merge=False)
        config.merge_with(layer)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: {_describe(error)}") from None


def set_key(config, key: str, value: str, open_keys: tuple[str, ...]) -> None:
    """One key=value override; the value is parsed as YAML (numbers, lists, null, true)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(config, parent_key) if parent_key else config
    known = OmegaConf.is_config(parent) and (
        not OmegaConf.is_dict(parent) or leaf in parent or parent_key in open_keys
    )
    if parent is None or not known:
        raise ConfigError(str(unknown_name("config key", key, _leaf_keys(config, open_keys))))
    try:
        parent[leaf] = yaml.safe_load(value) if value else ""
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        raise ConfigError(f"bad value for {key}: '{value}' ({_describe(error)})") from None


def _leaf_keys(config, open_keys: tuple[str, ...], prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if OmegaConf.is_dict(value) and path not in open_keys:
            keys += _leaf_keys(value, open_keys, path + ".")
        else:
            keys.append(path)
    return keys


def _describe(error: OmegaConfBaseException) -> str:
    return str(error).splitlines()[0]


def check(config: Config) -> None:
    """Values that are well typed but wrong."""
    from surrogates import METRICS

    search = config.search
    if search.metric not in METRICS:
        raise ConfigError(str(unknown_name("metric", search.metric, METRICS)))
    if search.controller not in CONTROLLERS:
        raise ConfigError(str(unknown_name("controller", search.controller, CONTROLLERS)))
    if search.reward_split not in ("holdout", "val"):
        raise ConfigError(f"search.reward_split must be holdout or val, got {search.reward_split}")
    if search.models_per_gpu < 1 or search.confirm_seeds < 1 or search.confirm_top_k < 0:
        raise ConfigError(
            "search.models_per_gpu and search.confirm_seeds must be >= 1, confirm_top_k >= 0"
        )
    if search.cpu_slots < 0:
        raise ConfigError(f"search.cpu_slots must be >= 0, got {search.cpu_slots}")
    if config.ppo.samples < 2 or config.ppo.steps < 1:
        raise ConfigError(
            f"ppo.samples must be >= 2 and ppo.steps >= 1, got {config.ppo.samples}, "
            f"{config.ppo.steps}"
        )


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def load(path: str | Path, schema=Config, open_keys: tuple[str, ...] = OPEN_MAPPINGS):
    """A resolved config.yaml of a run folder."""
    config = OmegaConf.structured(schema)
    merge_file(config, Path(path), open_keys)
    return OmegaConf.to_object(config)
