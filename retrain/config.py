"""The retrain configuration, filled in layers like the search's (search/config.py):

    defaults below (the VOC reference retrain, SPEC A§6)  <-  experiments/data/<dataset>.yaml
    (its `retrain:` section)  <-  FILE (the loss, and anything else it sets)  <-  key=value

FILE is a searched-loss file exported by a search, a shipped preset of experiments/retrain/, or
any YAML with a `loss:` mapping. Its `data:` section (a search's export names its dataset)
chooses the dataset unless `data=` is given; without either, `data=auto`.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from search.config import (
    EXPERIMENTS,
    ConfigError,
    DataConfig,
    dataset_choice,
    merge_file,
    set_key,
)
from segnets.engine import PREDICTIONS, FitConfig

RETRAIN_FILES = EXPERIMENTS / "retrain"
# free-form mappings: the loss builder, the model builder and the dataset check their keys
OPEN_KEYS = ("data.params", "loss", "retrain.model_args", "search")


@dataclass
class RetrainSettings:
    model: str = "deeplabv3plus"
    model_args: dict[str, Any] = field(
        default_factory=lambda: {"backbone": "resnet101", "output_stride": 8, "aux": True}
    )
    crop_size: int = 512
    scale: list[int] | None = field(default_factory=lambda: [2048, 512])  # None: no rescale
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    photometric: bool = True
    cat_max_ratio: float = 0.75  # crops where one class covers >= 75 % are redrawn (A§6)
    eval_split: str = "val"
    eval_scale: list[int] | None = field(default_factory=lambda: [2048, 512])  # whole images
    eval_batch_size: int = 1
    prediction: str = "max"  # max | T | rankdice
    classes: list[int] | None = None  # class-of-interest subset of the reported means
    tolerance: int = 5  # boundary tolerance of the evaluation (and of a loss that sets none)
    drop_background: bool = True  # VOC-style boundary metrics
    fit: FitConfig = field(
        default_factory=lambda: FitConfig(
            iterations=10_000,
            batch_size=32,  # over all processes (reference: 4 GPUs x 8)
            lr=0.02,
            eval_every=2000,
            checkpoint_every=1000,
            seed=1,
        )
    )


@dataclass
class RetrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "ce"})
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    search: dict[str, Any] = field(default_factory=dict)  # what the exporting search recorded
    name: str = ""  # run name: the file's stem
    processes: int = 1  # DDP processes (GPUs, or gloo processes on CPU)


def find_file(text: str) -> Path:
    """FILE as a path, or a name in experiments/retrain/ (with or without .yaml)."""
    for candidate in (Path(text), RETRAIN_FILES / text, RETRAIN_FILES / f"{text}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    shipped = ", ".join(sorted(p.name for p in RETRAIN_FILES.glob("*.yaml")))
    raise ConfigError(f"retrain file '{text}' not found (a path, or one of: {shipped})")


def resolve(path: Path, overrides: dict[str, str], data_root: str | None = None) -> RetrainConfig:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("loss"), dict):
        raise ConfigError(f"{path}: expected a 'loss:' mapping (name: surrogate, metric, theta)")
    overrides = dict(overrides)
    file_data = doc.get("data") or {}
    name, root = dataset_choice(
        overrides.pop("data", None) or file_data.get("name"), overrides.get("data.root"), data_root
    )
    config = OmegaConf.structured(RetrainConfig)
    profile = EXPERIMENTS / "data" / f"{name}.yaml"
    merge_file(config, profile, OPEN_KEYS, skip=("proxy", "search", "ppo", "ray"))
    if file_data.get("name") not in (None, name):  # the file's dataset arguments are for another
        doc = {k: v for k, v in doc.items() if k != "data"}
    merge_file(config, path, OPEN_KEYS, layer=doc)
    for key, value in overrides.items():
        set_key(config, key, value, OPEN_KEYS)
    config.data.name = name
    config.data.root = str(Path(config.data.root or root).resolve())
    config.name = config.name or path.stem
    result: RetrainConfig = OmegaConf.to_object(config)
    check(result)
    return result


def check(cfg: RetrainConfig) -> None:
    prediction = cfg.retrain.prediction
    if prediction not in PREDICTIONS:
        raise ConfigError(
            f"unknown retrain.prediction '{prediction}'; valid: {', '.join(PREDICTIONS)}"
        )
