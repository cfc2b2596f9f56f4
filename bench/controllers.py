"""Sample efficiency of the controllers: which one finds a good loss with the fewest proxy
trainings?

On shapes, for one region metric (miou) and one boundary metric (bf1): the default search with
each controller (ppo, random, cmaes, tpe) and 3 search seeds. Printed per metric and controller:
mean +- std over seeds of the best search reward after 25 %, 50 %, 100 % of the search trials,
the confirmed reward of the exported loss, and the number of proxy trainings each controller
needed to reach PPO's final confirmed reward (mean over seeds; '-' when it never did). A plot of
best-so-far reward vs trainings goes to <work>/controllers.png.

Hours on two cores (about 6.5 min per search, 24 searches by default). Runs live in fixed folders
under --work; a rerun skips finished searches and resumes interrupted ones.

Run: ./launch.sh bench controllers [--metrics miou bf1] [--seeds 3] [--work DIR] [key=value ...]
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONTROLLERS = ("ppo", "random", "cmaes", "tpe")


def run_search(metric: str, controller: str, seed: int, work: Path, extra: list[str]) -> Path:
    folder = work / f"{metric}-{controller}-seed{seed}"
    finished = [p for p in folder.glob("*") if (p / "summary.json").is_file()]
    if not finished:
        started = list(folder.glob("*/tune"))
        args = (
            ["search", "--resume", str(started[0].parent)]
            if started
            else [
                "search", metric, "data=shapes", f"search.controller={controller}",
                f"search.seed={seed}", "ray.dashboard=false", f"--results={folder}", *extra,
            ]
        )  # fmt: skip
        print("$ ./launch.sh " + " ".join(args), flush=True)
        subprocess.run([str(REPO / "launch.sh"), *args], check=True)
        finished = [p for p in folder.glob("*") if (p / "summary.json").is_file()]
    return finished[0]


def best_so_far(run_dir: Path) -> pd.Series:
    """Best search reward after each proxy training (failed trials count, as a training)."""
    trials = pd.read_csv(run_dir / "trials.csv")
    search = trials[trials.phase == "search"].reset_index(drop=True)
    return search.reward.fillna(-1).cummax().rename(lambda i: i + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", nargs="+", default=["miou", "bf1"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", default=str(REPO / "results" / "controllers"))
    parser.add_argument("overrides", nargs="*", help="extra key=value for every search")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(args.metrics), figsize=(6 * len(args.metrics), 4.5))
    axes = [axes] if len(args.metrics) == 1 else list(axes)
    lines = []
    for metric, ax in zip(args.metrics, axes, strict=True):
        curves, confirmed = {}, {}
        for controller in CONTROLLERS:
            runs = [
                run_search(metric, controller, s, work, args.overrides) for s in range(args.seeds)
            ]
            curves[controller] = pd.concat([best_so_far(r) for r in runs], axis=1)
            confirmed[controller] = [
                json.loads((r / "summary.json").read_text())["reward"] for r in runs
            ]
        target = statistics.fmean(confirmed["ppo"])
        lines += [
            f"### {metric}: best search reward (%) after N proxy trainings, mean +- std over "
            f"{args.seeds} seeds",
            "",
            "| controller | 25 % | 50 % | 100 % | confirmed | trainings to PPO's confirmed |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for controller, curve in curves.items():
            n = len(curve)
            cells = []
            for fraction in (0.25, 0.5, 1.0):
                row = 100 * curve.iloc[max(0, int(n * fraction) - 1)]
                cells.append(f"{row.mean():.2f} +- {row.std(ddof=0):.2f}")
            done = 100 * pd.Series(confirmed[controller])
            reach = curve.mean(axis=1)
            hit = reach[reach >= target]
            cells.append(f"{done.mean():.2f} +- {done.std(ddof=0):.2f}")
            cells.append(str(int(hit.index[0])) if len(hit) else "-")
            lines.append(f"| {controller} | " + " | ".join(cells) + " |")
            mean = 100 * curve.mean(axis=1)
            ax.plot(mean.index, mean, label=controller)
            ax.fill_between(mean.index, mean - 100 * curve.std(axis=1, ddof=0),
                            mean + 100 * curve.std(axis=1, ddof=0), alpha=0.15)  # fmt: skip
        ax.axhline(100 * target, color="k", ls=":", label="PPO confirmed (mean)")
        ax.set(
            title=f"{metric}: best reward so far vs proxy trainings",
            xlabel="proxy trainings",
            ylabel=f"best {metric} on holdout (%)",
        )
        ax.legend()
        lines.append("")
    fig.tight_layout()
    fig.savefig(work / "controllers.png", dpi=110)
    text = "\n".join(lines)
    (work / "controllers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
