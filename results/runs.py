"""Run folders as pandas DataFrames: a search (trials, policy), a retrain (metrics over
iterations, final), and many runs in one comparison table. Works on runs that are still going:
missing files are empty frames or None, never an error.

    from results import load_search, load_retrain, compare
    run = load_search("results/search/miou-shapes-20261123-144714")
    run.trials.groupby("step").reward.max()
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from surrogates import METRICS  # the six target metrics, in the run files' column order


@dataclass
class SearchRun:
    path: Path
    config: dict  # the resolved config.yaml
    trials: pd.DataFrame  # a row per finished trial (trials.csv)
    policy: pd.DataFrame  # a row per policy update (policy.csv)
    summary: dict | None  # summary.json once the search has finished
    failed: str | None  # the error when the search stopped itself

    @property
    def metric(self) -> str:
        return self.config["search"]["metric"]

    @property
    def metric_columns(self) -> list[str]:
        """The six metrics, and the searched spec's column (dice, ...) when it has one."""
        return metric_columns(self.trials, self.metric)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def candidates(self) -> pd.DataFrame:
        """The confirmation round: mean and spread of the reward per candidate, best first."""
        confirm = self.trials[self.trials.phase == "confirm"]
        if confirm.empty:
            return pd.DataFrame(columns=["candidate", "reward_mean", "reward_std", "seeds"])
        table = confirm.groupby("candidate").reward.agg(["mean", "std", "count"]).reset_index()
        table.columns = ["candidate", "reward_mean", "reward_std", "seeds"]
        return table.sort_values("reward_mean", ascending=False, ignore_index=True)


@dataclass
class RetrainRun:
    path: Path
    config: dict
    metrics: pd.DataFrame  # a row per evaluation (metrics.csv)
    classes: pd.DataFrame  # a row per evaluation and class, with the class names (classes.csv)
    final: dict | None  # final.json once finished
    comparison: dict | None  # comparison.json when a CE baseline was compared

    @property
    def target(self) -> str | None:
        """The metric the loss was searched for: a name, or a metric spec's name."""
        metric = self.config.get("loss", {}).get("metric")
        if isinstance(metric, dict):
            return metric.get("name")
        return metric or (self.config["retrain"].get("metric_spec") or {}).get("name")

    @property
    def metric_columns(self) -> list[str]:
        """The six metrics, and the evaluated metric spec's column when there is one."""
        spec = (self.config["retrain"].get("metric_spec") or {}).get("name")
        return metric_columns(self.metrics, spec)


def metric_columns(frame: pd.DataFrame, extra: str | None) -> list[str]:
    """METRICS, then `extra` (a metric spec's column) when the frame has it."""
    more = [extra] if extra and extra not in METRICS and extra in frame.columns else []
    return [*METRICS, *more]


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _config(path: Path) -> dict:
    if not (path / "config.yaml").is_file():
        raise ValueError(f"{path} is not a run folder (no config.yaml)")
    return yaml.safe_load((path / "config.yaml").read_text())


def run_kind(path: str | Path) -> str:
    """'search' or 'retrain', from what the config holds."""
    return "search" if "ppo" in _config(Path(path)) else "retrain"


def load_search(path: str | Path) -> SearchRun:
    path = Path(path)
    config = _config(path)
    if "ppo" not in config:
        raise ValueError(f"{path} is not a search run (its config has no ppo section)")
    failed = _json(path / "failed.json")
    return SearchRun(
        path=path,
        config=config,
        trials=_csv(path / "trials.csv"),
        policy=_csv(path / "policy.csv"),
        summary=_json(path / "summary.json"),
        failed=failed["error"] if failed else None,
    )


def load_retrain(path: str | Path) -> RetrainRun:
    path = Path(path)
    config = _config(path)
    if "retrain" not in config:
        raise ValueError(f"{path} is not a retrain run (its config has no retrain section)")
    return RetrainRun(
        path=path,
        config=config,
        metrics=_csv(path / "metrics.csv"),
        classes=_csv(path / "classes.csv"),
        final=_json(path / "final.json"),
        comparison=_json(path / "comparison.json"),
    )


def compare(paths: list[str | Path]) -> pd.DataFrame:
    """One row per run: its kind, dataset, loss or target metric, state and the six metrics
    (a retrain's last evaluation; a search's best confirmed candidate on the reward split)."""
    rows = []
    for path in paths:
        path = Path(path)
        if run_kind(path) == "search":
            run = load_search(path)
            row = {"run": path.name, "kind": "search", "data": run.config["data"]["name"]}
            row.update(target=run.metric, finished=run.finished)
            if run.finished:
                best = run.trials[
                    (run.trials.phase == "confirm") & (run.trials.candidate == run.summary["best"])
                ]
                row.update(best[run.metric_columns].mean().to_dict())
        else:
            run = load_retrain(path)
            row = {"run": path.name, "kind": "retrain", "data": run.config["data"]["name"]}
            row.update(target=run.target, finished=run.final is not None)
            if not run.metrics.empty:
                row.update(run.metrics.iloc[-1][run.metric_columns].to_dict())
                row["iteration"] = int(run.metrics.iloc[-1]["iteration"])
        rows.append(row)
    return pd.DataFrame(rows)
