"""The retrain configuration, filled in layers like the search's (experiments/config.py):

    defaults below (the VOC reference retrain, SPEC A§6)  <-  experiments/data/<dataset>.yaml
    (its `retrain:` section)  <-  FILE (the loss, and anything else it sets)  <-  key=value

FILE is a searched-loss file exported by a search, a shipped preset of experiments/retrain/, or
any YAML with a `loss:` mapping. Its `data:` section (a search's export names its dataset, as a
mapping or as a plain name) chooses the dataset unless `data=` is given; without either,
`data=auto`.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from experiments.config import (
    EXPERIMENTS,
    ConfigError,
    DataConfig,
    FullSizeSettings,
    check_ranges,
    check_values_present,
    dataset_choice,
    merge_file,
    set_key,
)
from experiments.config import load as load_file
from segnets.engine import PREDICTIONS
from surrogates import METRIC_COLUMNS, METRICS, MetricSpec, list_specs, load_spec, spec_from_dict

RETRAIN_FILES = EXPERIMENTS / "retrain"
# free-form mappings: the loss builder, the model builder, the dataset and the metric spec check
# their keys
OPEN_KEYS = ("data.params", "loss", "retrain.model_args", "retrain.metric_spec", "search")
# what each top-level section of a retrain file must be
SECTION_TYPES = {"loss": dict, "data": dict, "retrain": dict, "search": dict, "name": str}


@dataclass
class RetrainSettings(FullSizeSettings):
    """The full-size model, its training (experiments.config.FullSizeSettings) and its
    evaluation."""

    eval_split: str = "val"
    prediction: str = "max"  # max | T | rankdice
    classes: list[int] | None = None  # class-of-interest subset of the reported means
    tolerance: int = 5  # boundary tolerance of the evaluation (and of a loss that sets none)
    drop_background: bool = True  # VOC-style boundary metrics
    # a metric spec evaluated beside the standard metrics (docs/metrics.md), under its name in
    # metrics.csv and final.json; default (derived at resolve): the spec the loss was searched
    # for (loss.metric, or a search export's search.metric_spec), so CE baselines get it too
    metric_spec: dict[str, Any] = field(default_factory=dict)


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


def read_file(path: Path) -> dict:
    """A retrain file's sections, each of the right type; `data: NAME` is short for
    `data: {name: NAME}`."""
    try:
        text = path.read_text()
        check_values_present(yaml.compose(text), str(path))
        doc = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("loss"), dict):
        raise ConfigError(f"{path}: expected a 'loss:' mapping (name: surrogate, metric, theta)")
    if isinstance(doc.get("data"), str):
        doc["data"] = {"name": doc["data"]}
    for section, kind in SECTION_TYPES.items():
        if section in doc and not isinstance(doc[section], kind):
            raise ConfigError(
                f"{path}: '{section}' must be a {'mapping' if kind is dict else 'string'}, "
                f"got {doc[section]!r}"
            )
    return doc


def resolve(path: Path, overrides: dict[str, str], data_root: str | None = None) -> RetrainConfig:
    doc = read_file(path)
    overrides = dict(overrides)
    file_data = doc.get("data") or {}
    chosen = overrides.pop("data", None)
    name, root = dataset_choice(
        chosen or file_data.get("name"), overrides.get("data.root"), data_root
    )
    config = OmegaConf.structured(RetrainConfig)
    profile = EXPERIMENTS / "data" / f"{name}.yaml"
    merge_file(config, profile, OPEN_KEYS, skip=("proxy", "search", "ppo", "ray"))
    if file_data.get("name") not in (None, name):  # the file's dataset arguments are for another
        doc = {k: v for k, v in doc.items() if k != "data"}
    elif chosen and chosen.endswith((".yaml", ".yml")):  # data=FILE.yaml places the data itself
        doc = {**doc, "data": {k: v for k, v in file_data.items() if k != "root"}}
    merge_file(config, path, OPEN_KEYS, layer=doc)
    for key, value in overrides.items():
        set_key(config, key, value, OPEN_KEYS)
    config.data.name = name
    config.data.root = str(Path(config.data.root or root).resolve())
    config.name = config.name or path.stem
    result: RetrainConfig = OmegaConf.to_object(config)
    if not result.retrain.metric_spec:
        result.retrain.metric_spec = searched_spec(result)
    check(result)
    return result


def searched_spec(cfg: RetrainConfig) -> dict:
    """The metric spec a loss file was searched for, as a dict ({} for the paper's six): the
    loss's own metric when it is a spec (a mapping or a built-in spec name), else the spec a
    search export records (its best loss may be a baseline, which carries no metric)."""
    metric = cfg.loss.get("metric") or cfg.search.get("metric_spec")
    if not metric or (isinstance(metric, str) and metric in METRICS):
        return {}
    try:
        named = isinstance(metric, str) and not metric.endswith((".yaml", ".yml"))
        if named and metric not in list_specs():
            raise ValueError(f"loss.metric '{metric}' is not a metric (nor a spec name)")
        spec = load_spec(metric) if isinstance(metric, str) else spec_from_dict(metric)
    except ValueError as error:
        raise ConfigError(f"loss.metric: {error}") from None
    return spec.to_dict()


def eval_specs(cfg: RetrainConfig) -> list[MetricSpec]:
    """The specs the evaluation computes beside the standard metrics (none when SegMetrics has
    the spec's column already: miou_image)."""
    if not cfg.retrain.metric_spec:
        return []
    spec = spec_from_dict(cfg.retrain.metric_spec)
    return [] if spec.name in METRIC_COLUMNS else [spec]


def target_metric(cfg: RetrainConfig) -> str | None:
    """The name of the metric the loss was searched for (a comparison's target column)."""
    metric = cfg.loss.get("metric")
    if isinstance(metric, dict):
        return metric.get("name")
    return metric or cfg.retrain.metric_spec.get("name")


def check(cfg: RetrainConfig) -> None:
    """Values that are well typed but wrong: the prediction procedure, the metric spec, ranges."""
    if cfg.retrain.metric_spec:
        try:
            spec_from_dict(cfg.retrain.metric_spec)
        except ValueError as error:
            raise ConfigError(f"retrain.metric_spec: {error}") from None
    prediction = cfg.retrain.prediction
    if prediction not in PREDICTIONS:
        raise ConfigError(
            f"unknown retrain.prediction '{prediction}'; valid: {', '.join(PREDICTIONS)}"
        )
    check_ranges(cfg)


def load(path: str | Path) -> RetrainConfig:
    """The resolved config.yaml of a retrain run folder."""
    return load_file(path, RetrainConfig, OPEN_KEYS)
