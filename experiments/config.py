"""The config layer both stages share, beside the experiment files it reads (DESIGN.md, Configs).

A stage's config is a tree of dataclasses (search/config.py, retrain/config.py) filled in layers:

    dataclass defaults  <-  experiments/... YAML files  <-  key=value words on the command line

An unknown key (with a did-you-mean), a wrong type, a value out of its range, or a mapping key
written without its value is a one-line `ConfigError`; the commands print it with `fail` and
exit 2 before anything is written. No Ray, pandas or matplotlib here: every retrain process and
every search trial imports this module.
"""

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segnets.engine import FitConfig
from surrogates.checks import unknown_name

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"


class ConfigError(ValueError):
    """A bad command line, file or key; the command prints it in one line and exits 2."""


def fail(message: str) -> NoReturn:
    """The one way a command rejects its input: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# --- what both stages configure -------------------------------------------------------------


@dataclass
class DataConfig:
    # shapes | voc | cityscapes | ade20k | camvid | cocostuff | folder (a user's own: root is
    # its folder or its dataset.yaml) | auto (VOC, else Cityscapes, else shapes)
    name: str = "auto"
    root: str = ""  # "" = <repo>/data
    params: dict[str, Any] = field(default_factory=dict)  # dataset arguments (shapes: size ...)


@dataclass
class TrainSettings:
    """A network and how it trains: the search's proxy and the retrain share these fields (each
    subclass sets its own defaults and adds its evaluation settings)."""

    model: str = "deeplabv3plus"
    model_args: dict[str, Any] = field(default_factory=dict)  # the model builder checks them
    crop_size: int = 512
    scale: list[int] | None = None  # rescale to fit (long, short) side; None: no rescale
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    photometric: bool = True
    cat_max_ratio: float = 0.75  # crops where one class covers >= 75 % are redrawn (A§5-6)
    eval_scale: list[int] | None = None  # evaluation images rescaled to fit; None: as they are
    eval_batch_size: int = 1
    # a surrogate loss computed per group of this many images, averaged over the groups (None:
    # pooled over each process's batch, the reference); makes the loss independent of the
    # number of DDP processes (SurrogateLoss's group_size)
    loss_group_size: int | None = None
    # decode and shrink the training images (and a search's reward images) once into
    # <data.root>/cache, which every process on the machine maps (data/cache.py); for datasets
    # read from image files with a rescale
    cache_images: bool = False
    fit: FitConfig = field(default_factory=FitConfig)


@dataclass
class FullSizeSettings(TrainSettings):
    """The full-size model and its training (reference A§6: R101 DeepLabV3+ OS 8, 512 px
    crops of images rescaled to fit 2048 x 512, batch 32, 10k SGD iterations): the retrain's,
    and the search's confirmation round at search.confirm_fidelity > 0. The dataset profile's
    `retrain:` section sets both."""

    model_args: dict[str, Any] = field(
        default_factory=lambda: {
            "backbone": "resnet101",
            "output_stride": 8,
            "aux": True,
            "pretrained_backbone": "imagenet",  # torchvision's weights API, the torch hub cache
        }
    )
    scale: list[int] | None = field(default_factory=lambda: [2048, 512])
    eval_scale: list[int] | None = field(default_factory=lambda: [2048, 512])  # whole images
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


def build_train_set(data: DataConfig, settings: TrainSettings, without_holdout: bool = False):
    """The training split with the augmentation of `settings` (SPEC A§5-6); flip, photometric
    distortion and normalisation run batch-wise on the training device (segnets.engine)."""
    from data import build_dataset
    from data.transforms import train_transforms

    transform = train_transforms(
        crop_size=settings.crop_size,
        scale=settings.scale,
        ratio_range=settings.ratio_range,
        flip=settings.flip,
        photometric=settings.photometric,
        cat_max_ratio=settings.cat_max_ratio,
        batch_wise=True,
    )
    params = dict(without_holdout=without_holdout, **data.params)
    dataset = build_dataset(data.name, data.root, "train", None, **params)
    largest = None
    if settings.scale is not None:  # the largest size the random rescale can ask for
        largest = [round(side * max(settings.ratio_range)) for side in settings.scale]
    return with_image_cache(dataset, transform, largest, data, settings.cache_images)


def with_image_cache(dataset, transform, largest: list[int] | None, data: DataConfig, cache: bool):
    """`dataset` (built without a transform) with `transform`. With `cache`, a dataset read from
    image files and a size `largest` (long, short side) its images are shrunk to fit, the items
    come from the machine's cache under <data.root>/cache instead (data/cache.py): decoded and
    shrunk once, for every process that reads them."""
    read_from_files = isinstance(getattr(dataset, "images", None), list)  # not shapes (memory)
    if not (cache and largest is not None and read_from_files):
        dataset.transform = transform
        return dataset
    from data.cache import cached_dataset

    root = Path(data.root)
    folder = root.parent if root.is_file() else root  # data=path/to/dataset.yaml: its folder
    return cached_dataset(dataset, tuple(largest), folder / "cache", transform)


def preflight(build: Callable[[], Any]) -> None:
    """Run `build` (what every process of the run will build: dataset, model, loss) once before
    a run folder exists, so a missing dataset or a bad model argument is a one-line error now."""
    try:
        build()
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise ConfigError(str(error).splitlines()[0]) from None


# --- the command line -------------------------------------------------------------------------


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


def dataset_choice(name: str | None, root: str | None, default_root: str | None) -> tuple:
    """(dataset name with auto resolved, data root) for `data=NAME` and `data.root=...`.
    `data=path/to/dataset.yaml` is the folder dataset with that file as its root."""
    import data as datasets  # the dataset registry (and the torchvision compatibility import)

    if name and name.endswith((".yaml", ".yml")):
        if not Path(name).is_file():
            raise ConfigError(f"data={name}: no such dataset file")
        if root:
            raise ConfigError(
                f"data={name} names the dataset by its file; drop data.root={root} (the file's "
                "folder is the root, or the file's own root: key)"
            )
        return "folder", str(Path(name).resolve())
    name = name or "auto"
    root = root or default_root or str(datasets.DEFAULT_ROOT)
    if name not in ("auto", *datasets.list_datasets()):
        raise ConfigError(str(unknown_name("dataset", name, ["auto", *datasets.list_datasets()])))
    return datasets.resolve_dataset(name, root), root


# --- layers -------------------------------------------------------------------------------------


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
        if layer is None:
            check_values_present(yaml.compose(path.read_text()), str(path))
        layer = OmegaConf.load(path) if layer is None else OmegaConf.create(layer)
        for key in skip:
            layer.pop(key, None)
        for key in open_keys:
            if OmegaConf.select(layer, key) is not None:
                OmegaConf.update(config, key, {}, merge=False)
        config.merge_with(layer)
    except (OmegaConfBaseException, yaml.YAMLError) as error:
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
        check_values_present(yaml.compose(value), key)
        parent[leaf] = _parse_value(value)
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        raise ConfigError(f"bad value for {key}: '{value}' ({_describe(error)})") from None


def _parse_value(text: str):
    """A command-line value as YAML; PyYAML's YAML 1.1 reads 1e-4, nan and inf as strings,
    which are numbers here."""
    value = yaml.safe_load(text) if text else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def check_values_present(node, where: str) -> None:
    """A flow mapping key without a value is a typo, not a null: YAML reads `{width:32}` as the
    key 'width:32' with no value (a space must follow the colon), which a free-form mapping
    would silently accept. An explicit `null` is still allowed."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            empty = isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null")
            if node.flow_style and empty and value.value == "":
                hint = key.value.replace(":", ": ", 1) if ":" in key.value else f"{key.value}: ..."
                raise ConfigError(
                    f"{where}: the key '{key.value}' has no value; write {{{hint}}} "
                    "(a space after the colon)"
                )
            check_values_present(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_values_present(item, where)


def _leaf_keys(config, open_keys: tuple[str, ...], prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if OmegaConf.is_dict(value) and path not in open_keys:
            keys += _leaf_keys(value, open_keys, path + ".")
        else:
            keys.append(path)
    return keys


def _describe(error: Exception) -> str:
    return str(error).splitlines()[0]


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config) -> dict:
    """The resolved config as plain Python values (what a checkpoint carries)."""
    return OmegaConf.to_container(OmegaConf.structured(config))


def load(path: str | Path, schema: type, open_keys: tuple[str, ...]):
    """A resolved config.yaml of a run folder, back into its dataclasses."""
    config = OmegaConf.structured(schema)
    merge_file(config, Path(path), open_keys)
    return OmegaConf.to_object(config)


# --- ranges -------------------------------------------------------------------------------------

# The range of every numeric setting, by field name in any section (a name means the same thing
# wherever it appears: ppo.lr and proxy.fit.lr are both learning rates). Every float must also
# be finite. Checked on every resolved config, search and retrain alike.
_POSITIVE = ("> 0", lambda v: v > 0)
_NON_NEGATIVE = (">= 0", lambda v: v >= 0)
_UNIT = ("in [0, 1]", lambda v: 0 <= v <= 1)
RANGES = {
    **dict.fromkeys(
        ["iterations", "batch_size", "lr", "head_lr_mult", "crop_size", "eval_crop",
         "eval_batch_size", "scale", "eval_scale", "ratio_range", "steps", "sigma", "epochs",
         "clip", "confirm_seeds", "models_per_gpu", "loss_group_size", "target_kl"],
        _POSITIVE,
    ),
    **dict.fromkeys(
        ["weight_decay", "min_lr", "poly_power", "warmup_iterations", "workers", "seed",
         "log_every", "eval_every", "checkpoint_every", "tolerance", "confirm_top_k",
         "confirm_margin",
         "cpu_slots", "dashboard_port", "processes", "rungs"],
        _NON_NEGATIVE,
    ),
    **dict.fromkeys(
        ["momentum", "aux_weight", "region_weight", "cat_max_ratio", "confirm_fidelity"], _UNIT
    ),
    "samples": (">= 2 (the first is the policy mean)", lambda v: v >= 2),
    "reduction": (">= 2", lambda v: v >= 2),
}  # fmt: skip


def check_ranges(config, prefix: str = "") -> None:
    """Raise ConfigError for the first setting outside its range (see RANGES)."""
    for f in fields(config):
        key, value = f"{prefix}{f.name}", getattr(config, f.name)
        if is_dataclass(value):
            check_ranges(value, key + ".")
            continue
        values = value if isinstance(value, list) else [value]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        rule = RANGES.get(f.name)
        if rule and not all(rule[1](v) for v in numbers):
            raise ConfigError(f"{key} must be {rule[0]}, got {value}")
