"""`./launch.sh check-data [data=NAME] [data.root=DIR] [data.params.KEY=VALUE ...]`: the data
check of data/check.py as a command, and `check_before_start`, the same check as search and
retrain run it before anything starts.

The dataset is chosen as search and retrain choose it (`data=auto` by default; the dataset
profile's `data:` section, then the command line's keys). The report goes to stdout; each
problem is a line `error: ...` on stderr and the exit code is 2; a clean check (warnings allowed)
exits 0. Bad arguments: one line, exit 2. Details: docs/check-data.md.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from data.check import IN_MEMORY, CheckResult, check_dataset, format_report
from experiments.config import (
    EXPERIMENTS,
    ConfigError,
    DataConfig,
    dataset_choice,
    fail,
    merge_file,
    parse_overrides,
    set_key,
)

USAGE = """./launch.sh check-data [data=NAME] [data.root=DIR] [data.params.KEY=VALUE ...]

Reads every mask of the dataset's train, val (and test) splits once and reports per split the
images, the classes' pixel shares and the raw mask values; fails (exit 2) on images without
masks, size mismatches, values that are neither classes nor void, JPEG masks, empty splits and
train/val overlap. A rerun on unchanged files answers from <data.root>/cache/check-data/.
NAME: auto (default) or a dataset name. Details: docs/check-data.md."""
OPEN_KEYS = ("data.params",)


@dataclass
class CheckConfig:
    data: DataConfig = field(default_factory=DataConfig)


def resolve(words: list[str]) -> DataConfig:
    """The dataset of `data=NAME data.root=DIR data.params.KEY=VALUE` words (ConfigError for
    anything else), with its profile's `data:` section beneath the words."""
    overrides = parse_overrides(words)
    if "data.name" in overrides:  # `data=` chooses the dataset (and its profile), as in search
        raise ConfigError(f"choose the dataset with data={overrides['data.name']}, not data.name")
    name, root = dataset_choice(overrides.pop("data", None), overrides.get("data.root"), None)
    config = OmegaConf.structured(CheckConfig)
    profile = EXPERIMENTS / "data" / f"{name}.yaml"
    if profile.is_file():
        section = (yaml.safe_load(profile.read_text()) or {}).get("data")
        if section:
            merge_file(config, profile, OPEN_KEYS, layer={"data": section})
    for key, value in overrides.items():
        set_key(config, key, value, OPEN_KEYS)
    data: DataConfig = OmegaConf.to_object(config).data
    data.name = name
    data.root = str(Path(data.root or root).resolve())
    return data


def check_before_start(data: DataConfig, splits: tuple[str, ...], stage: str) -> CheckResult:
    """The data check of a search or retrain on the `splits` it reads, before anything is
    written: one summary line and the warnings printed, the problems a ConfigError (one line
    each). Cached after the first time; silent for a generated dataset (shapes)."""
    if data.name in IN_MEMORY:
        return CheckResult(data.name, data.root, "generated in memory", in_memory=True)
    result = check_dataset(data.name, data.root, data.params, splits, progress=True)
    if result.problems:
        lines = "\n".join(f"  {problem}" for problem in result.problems)
        count = f"{len(result.problems)} problem{'s' if len(result.problems) > 1 else ''}"
        raise ConfigError(
            f"the data check found {count} in {data.name} at {data.root} (the full report: "
            f"./launch.sh check-data data={data.name} data.root={data.root}):\n{lines}"
        )
    counts = ", ".join(f"{report.split} {report.images:,}" for report in result.splits)
    cached = all(report.cached for report in result.splits)
    print(f"[{stage}] data check: {counts} images, no problem{' (cached)' if cached else ''}")
    for warning in result.warnings:
        print(f"[{stage}] data warning: {warning}")
    return result


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] in (["-h"], ["--help"], ["help"]):
        print(USAGE)
        return 0
    try:
        data = resolve(words)
    except ConfigError as error:
        fail(str(error))
    result = check_dataset(data.name, data.root, data.params, progress=True)
    print(format_report(result), flush=True)
    if result.ok:
        if not result.in_memory:
            print(f"check-data: no problem ({len(result.warnings)} warning(s))")
        return 0
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
