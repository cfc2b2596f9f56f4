"""Sample efficiency of the controllers: which one finds a good loss with the fewest proxy
trainings?

On shapes, for one region metric (miou) and one boundary metric (bf1): the default search with
each controller (ppo, random, cmaes, tpe) and 3 search seeds. Printed per metric and controller:
mean +- std over seeds of the best search reward after 25 %, 50 %, 100 % of the search trials,
the confirmed reward of the exported loss (confirmation round, 2 seeds per candidate), and the
number of proxy trainings after which a controller's best-so-far (mean over seeds) reaches PPO's
final best ('-' when it never did), and per seed the trainings to that seed's PPO final best.
Table and plot of best-so-far vs trainings per metric: <work>/controllers-<metric>.md and .png,
so the metrics can also run one at a time.

Hours on two cores (about 6.5 min per search, 24 searches by default). Runs live in fixed folders
under --work; a rerun skips finished searches and resumes interrupted ones. Seed 0 of every
metric and controller runs first, then seed 1, ...; the tables cover the seeds every controller
has finished (--table-only prints them without running anything).

Run: ./launch.sh bench controllers [--metrics miou bf1] [--seeds 3] [--work DIR] [--table-only]
                                   [key=value ...]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from surrogates import METRICS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONTROLLERS = ("ppo", "random", "cmaes", "tpe")


def search_folder(metric: str, controller: str, seed: int, work: Path) -> Path:
    return work / f"{metric}-{controller}-seed{seed}"


def finished_search(folder: Path) -> Path | None:
    done = [p for p in folder.glob("*") if (p / "summary.json").is_file()]
    return done[0] if done else None


def run_search(metric: str, controller: str, seed: int, work: Path, extra: list[str]) -> Path:
    """The default search with this controller and seed, run (or resumed) once."""
    folder = search_folder(metric, controller, seed, work)
    done = finished_search(folder)
    if done is None:
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
        done = finished_search(folder)
    return done


def best_so_far(run_dir: Path) -> pd.Series:
    """Best search reward after each proxy training (failed trials count, as a training)."""
    trials = pd.read_csv(run_dir / "trials.csv")
    search = trials[trials.phase == "search"].reset_index(drop=True)
    return search.reward.fillna(-1).cummax().rename(lambda i: i + 1)


def trainings_to(curve: pd.Series, target: float) -> str:
    """The first training after which a best-so-far curve reaches the target, '' if never."""
    hit = curve[curve >= target - 1e-9]
    return str(int(hit.index[0])) if len(hit) else ""


def report(metric: str, runs: dict[str, list[Path]], work: Path) -> str:
    """The table and plot of one metric; both are also written to <work>/controllers-<metric>.*"""
    curves = {
        c: pd.concat([best_so_far(r) for r in rs], axis=1, ignore_index=True)
        for c, rs in runs.items()
    }
    confirmed = {
        c: 100 * pd.Series([json.loads((r / "summary.json").read_text())["reward"] for r in rs])
        for c, rs in runs.items()
    }
    # The target is PPO's final best search reward: the same single-seed quantity as the curves
    # (a confirmed reward is a 2-seed mean of a re-training, lower than the max it was picked by).
    target = 100 * curves["ppo"].iloc[-1].mean()
    seeds = len(runs["ppo"])
    lines = [
        f"### {metric}: best search reward (%) after N proxy trainings, mean +- std over "
        f"{seeds} seed(s)",
        "",
        "| controller | 25 % | 50 % | 100 % | confirmed export | trainings to PPO's final best "
        "| per seed, vs that seed's PPO |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for controller, curve in curves.items():
        curve = 100 * curve
        cells = []
        for fraction in (0.25, 0.5, 1.0):
            row = curve.iloc[max(0, int(len(curve) * fraction) - 1)]
            cells.append(f"{row.mean():.2f} +- {row.std(ddof=0):.2f}")
        done = confirmed[controller]
        mean, std = curve.mean(axis=1), curve.std(axis=1, ddof=0)
        cells.append(f"{done.mean():.2f} +- {done.std(ddof=0):.2f}")
        cells.append(trainings_to(mean, target) or f"- (> {len(curve)})")
        # Paired by seed: a search seed is also the proxy seed, and some seeds score lower for
        # every controller, so each seed's curve is held against PPO's final best on that seed.
        paired = [trainings_to(curve[s], 100 * curves["ppo"][s].iloc[-1]) for s in curve.columns]
        cells.append(" / ".join(n or "-" for n in paired))
        lines.append(f"| {controller} | " + " | ".join(cells) + " |")
        (line,) = ax.plot(mean.index, mean, label=controller)
        ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.axhline(target, color="k", ls=":", label="PPO final best (mean)")
    ax.set(
        title=f"{metric}: best search reward vs proxy trainings ({seeds} seed(s), mean +- std)",
        xlabel="proxy trainings (search phase)",
        ylabel=f"best {metric} on the holdout split (%)",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(work / f"controllers-{metric}.png", dpi=110)
    plt.close(fig)
    text = "\n".join(lines) + "\n"
    (work / f"controllers-{metric}.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", nargs="+", default=["miou", "bf1"], choices=METRICS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", default=str(REPO / "results" / "controllers"))
    parser.add_argument("--table-only", action="store_true", help="report what has finished")
    parser.add_argument("overrides", nargs="*", help="extra key=value for every search")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Seeds outermost: a bench stopped early still compares every controller on every metric.
    for seed in range(0 if args.table_only else args.seeds):
        for metric in args.metrics:
            for controller in CONTROLLERS:
                run_search(metric, controller, seed, work, args.overrides)
    for metric in args.metrics:
        found = {
            c: [finished_search(search_folder(metric, c, s, work)) for s in range(args.seeds)]
            for c in CONTROLLERS
        }
        complete = [s for s in range(args.seeds) if all(found[c][s] for c in CONTROLLERS)]
        if complete:
            runs = {c: [found[c][s] for s in complete] for c in CONTROLLERS}
            print(report(metric, runs, work), flush=True)


if __name__ == "__main__":
    sys.exit(main())
