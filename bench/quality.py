"""The search-quality table: does a searched loss beat cross-entropy, and the hand-made losses
people would pick instead, on its own metric?

On shapes, for each target metric: the default search (`./launch.sh search METRIC`), then
retrains with 3 seeds each of the searched loss, the published VOC preset (`<metric>_bezier.yaml`),
the identity curve (the plain soft-metric surrogate) and CE; `--losses` adds any registered
baseline loss (focal, dice, jaccard, lovasz, wce, dpce, ssim, ce_dice, tversky, focal_tversky,
gdice, boundary, hausdorff: surrogates/losses.py) with its default options. A baseline does not
depend on the target metric: its seeds are retrained once (retrain-<loss>/seed<k>) and shared by
every metric's table. Prints, per metric, mean +- std of every metric per loss, the target metric
marked, whether the searched loss beats CE on it by more than the seed spread (the larger of the
two stds), and the same against the best hand-made loss (the best baseline, CE included).

A target may also be a built-in metric spec (dice, fbeta, tversky, ...: docs/metrics.md) pooled
over images without a band: a run's value is its final.json column when its retrain computed the
spec (the searched export's does), else the spec on the pooled per-class counts of its last
evaluation in classes.csv, so the baselines' shared runs serve every spec too. A spec has no
published preset: `preset` is skipped for it.

It takes hours on two cores (about 40 min per metric plus 10 min of CE). Every run lives in a
fixed folder under --work; a rerun skips finished runs and resumes interrupted ones, so the
benchmark can be stopped and restarted at will; the table covers whatever has finished.
The searches run one after another (each uses every core through Ray); then the retrains run
--jobs at a time, each on cores / jobs threads with its log in its seed folder. A retrain's
numbers depend on its thread count (float sums in a different order), so compare tables made
with the same --jobs on the same number of cores.

Run: ./launch.sh bench quality [--metrics miou macc dice ...] [--losses ce ce_dice dice lovasz
                               tversky ... preset searched] [--seeds 3] [--jobs 2] [--work DIR]
                               [--table-only]
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from results.files import read_csv
from segnets.engine import usable_cpus
from surrogates import SpecMetric, list_losses, list_specs, load_spec

REPO = Path(__file__).resolve().parent.parent
METRICS = ("miou", "fwiou", "macc", "gacc", "biou", "bf1")
LOSSES = ("ce", "searched", "preset", "identity")  # the default race
PER_METRIC = ("searched", "preset", "identity")  # losses that depend on the target metric
BASELINES = tuple(name for name in list_losses() if name != "surrogate")  # hand-made, shared


def launch(*args: str, log: Path | None = None, threads: int | None = None) -> None:
    print("$ ./launch.sh " + " ".join(args) + (f"  > {log}" if log else ""), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    command = [str(REPO / "launch.sh"), *args]
    with log.open("a") if log else contextlib.nullcontext() as out:
        subprocess.run(command, check=True, env=env, stdout=out, stderr=out)


def threads_per_job(jobs: int) -> int | None:
    """Threads of each of `jobs` retrains run at once: cores / jobs; None (torch's own) alone."""
    return max(1, usable_cpus() // jobs) if jobs > 1 else None


def finished_run(folder: Path, marker: str) -> Path | None:
    runs = [p for p in folder.glob("*") if (p / marker).is_file()] if folder.is_dir() else []
    return runs[0] if runs else None


def search(metric: str, work: Path) -> Path:
    """The default search for metric, run (or resumed) once; returns its export."""
    folder = work / f"search-{metric}"
    done = finished_run(folder, "summary.json")
    if done is None:
        started = list(folder.glob("*/tune")) if folder.is_dir() else []
        if started:
            launch("search", "--resume", str(started[0].parent))
        else:
            launch("search", metric, "data=shapes", f"--results={folder}", "ray.dashboard=false")
        done = finished_run(folder, "summary.json")
    return done / f"{metric}_bezier.yaml"


def loss_file(loss: str, metric: str, work: Path) -> Path:
    if loss == "ce":
        return REPO / "experiments" / "retrain" / "ce.yaml"
    if loss in BASELINES:  # its default options, the shapes profile's training settings
        path = work / f"baseline-{loss}.yaml"
        path.write_text(f"loss: {{name: {loss}}}\n")
        return path
    if loss == "preset":
        return REPO / "experiments" / "retrain" / f"{metric}_bezier.yaml"
    if loss == "identity":
        path = work / f"identity-{metric}.yaml"
        path.write_text(f"loss: {{name: surrogate, metric: {metric}, theta: identity}}\n")
        return path
    return search(metric, work)


def seed_folder(loss: str, metric: str, seed: int, work: Path) -> Path:
    """Where a retrain seed lives: retrain-<loss> for a baseline, shared by every metric, else
    retrain-<metric>-<loss>. A search whose export is cross-entropy (no surrogate beat CE in
    its confirmation round) retrains exactly CE's runs: its row shares CE's folders."""
    if loss == "searched" and exports_ce(metric, work):
        loss = "ce"
    name = f"retrain-{loss}" if loss in BASELINES else f"retrain-{metric}-{loss}"
    return work / name / f"seed{seed}"


def exports_ce(metric: str, work: Path) -> bool:
    done = finished_run(work / f"search-{metric}", "summary.json")
    return done is not None and json.loads((done / "summary.json").read_text())["loss"] == "ce"


def retrain(file: Path, folder: Path, seed: int, threads: int | None) -> None:
    """One retrain seed, run (or resumed) to its final.json unless it has one."""
    if finished_run(folder, "final.json"):
        return
    log = folder / "retrain.log" if threads else None
    started = list(folder.glob("*/checkpoints")) if folder.is_dir() else []
    if started:
        launch("retrain", "--resume", str(started[0].parent), log=log, threads=threads)
    else:
        launch(
            "retrain", str(file), "data=shapes", f"retrain.fit.seed={seed}",
            f"--results={folder}", log=log, threads=threads,
        )  # fmt: skip


def has_preset(metric: str) -> bool:
    return (REPO / "experiments" / "retrain" / f"{metric}_bezier.yaml").is_file()


def run_all(metrics: list[str], losses: list[str], seeds: int, jobs: int, work: Path) -> None:
    """The searches one by one, then every missing retrain seed, jobs at a time."""
    pairs = [(loss, m) for m in metrics for loss in losses if loss != "preset" or has_preset(m)]
    files = {(loss, m): loss_file(loss, m, work) for loss, m in pairs}
    runs = {
        seed_folder(loss, m, seed, work): (file, seed)
        for (loss, m), file in files.items()
        for seed in range(seeds)
    }  # a baseline's folders are shared (every metric, a CE export): the dict keeps one run each
    threads = threads_per_job(jobs)
    with ThreadPoolExecutor(jobs) as pool:
        pending = [pool.submit(retrain, f, folder, s, threads) for folder, (f, s) in runs.items()]
        for future in pending:
            future.result()  # the first failure stops the benchmark with its error


def spec_target(metric: str) -> bool:
    """Whether a target is a metric spec rather than one of the six; refuses a spec that the
    pooled per-class counts of classes.csv cannot give."""
    if metric in METRICS:
        return False
    spec = load_spec(metric)
    if spec.images != "pooled" or spec.band > 0:
        raise ValueError(
            f"--metrics {metric} is per image or on a band; only a spec pooled over images "
            "without a band has its value for every run"
        )
    return True


def spec_value(metric: str, run: Path, final: dict) -> float:
    """A spec target's value for one finished run: final.json's column when the retrain computed
    it, else the spec on the pooled counts of the last evaluation in classes.csv."""
    if metric in final:
        return final[metric]
    rows = [
        r for r in read_csv(run / "classes.csv") if int(r["iteration"]) == int(final["iteration"])
    ]
    if not rows or not rows[0].get("tp"):
        raise SystemExit(f"bench quality: {run}/classes.csv has no pixel counts for {metric}")
    counts = torch.tensor([[int(r[k]) for k in ("tp", "fp", "fn", "tn")] for r in rows])
    exact = SpecMetric(metric, len(rows))
    exact.state["counts"] = counts
    return exact.compute()


def collect(metric: str, seeds: int, work: Path) -> dict[str, list[dict]]:
    """loss -> the final.json of each finished seed (with a spec target's value), for every loss
    the bench knows."""
    results, is_spec = {}, spec_target(metric)
    for loss in ("ce", *PER_METRIC, *(b for b in BASELINES if b != "ce")):
        finals = []
        for seed in range(seeds):
            done = finished_run(seed_folder(loss, metric, seed, work), "final.json")
            if done:
                final = json.loads((done / "final.json").read_text())
                if is_spec:
                    final[metric] = spec_value(metric, done, final)
                finals.append(final)
        results[loss] = finals
    return results


def loss_stats(metric: str, results: dict[str, list[dict]]) -> dict[tuple[str, str], tuple]:
    """(loss, column) -> (mean, std) in %, over the finished seeds, for every column shown."""
    stats = {}
    for loss, finals in results.items():
        for m in [*METRICS, *([metric] if spec_target(metric) else [])]:
            values = [100 * float(f[m]) for f in finals]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                stats[(loss, m)] = (statistics.fmean(values), std)
    return stats


def versus(stats: dict, metric: str, loss: str) -> tuple[float, float, str]:
    """The searched loss's margin over `loss` on metric, the seed spread (the larger std), and
    the verdict."""
    (ours, our_std), (theirs, their_std) = stats[("searched", metric)], stats[(loss, metric)]
    gain, spread = ours - theirs, max(our_std, their_std)
    if gain > spread:
        return gain, spread, "beats it by more than the seed spread"
    return (
        gain,
        spread,
        "within the spread" if gain >= -spread else "below it by more than the spread",
    )


def best_hand_made(stats: dict, metric: str) -> str | None:
    hand_made = [loss for loss in BASELINES if (loss, metric) in stats]
    return max(hand_made, key=lambda loss: stats[(loss, metric)][0]) if hand_made else None


def table(metric: str, results: dict[str, list[dict]], ce_export: bool) -> str:
    columns = [*METRICS, *([metric] if spec_target(metric) else [])]
    header = [f"{m}*" if m == metric else m for m in columns]
    lines = [
        f"### target {metric}",
        "",
        "| loss | seeds | " + " | ".join(header) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    stats = loss_stats(metric, results)
    for loss, finals in results.items():
        if finals:
            cells = [f"{stats[(loss, m)][0]:.2f} +- {stats[(loss, m)][1]:.2f}" for m in columns]
            lines.append(f"| {loss} | {len(finals)} | " + " | ".join(cells) + " |")
    if ("searched", metric) in stats and ("ce", metric) in stats:
        gain, spread, _ = versus(stats, metric, "ce")
        verdict = "beats CE by more than the seed spread" if gain > spread else "does not"
        lines += ["", f"searched - CE on {metric}: {gain:+.2f} (spread {spread:.2f}): {verdict}"]
        if ce_export:
            lines[-1] += " (the search exported cross-entropy: the searched row is CE's runs)"
    best = best_hand_made(stats, metric)
    hand_made = sum((loss, metric) in stats for loss in BASELINES)
    if ("searched", metric) in stats and hand_made > 1:
        gain, spread, verdict = versus(stats, metric, best)
        lines.append(
            f"best hand-made on {metric}: {best} {stats[(best, metric)][0]:.2f}; searched - "
            f"{best}: {gain:+.2f} (spread {spread:.2f}): {verdict}"
        )
    return "\n".join(lines)


def race(rows: dict[str, dict[str, list[dict]]]) -> str:
    """One line per target metric: CE, the best hand-made loss and the searched loss."""
    lines = [
        "### the searched loss against the best hand-made one",
        "",
        "| target | CE | best hand-made | searched | searched - best (spread) | verdict |",
        "|---|---:|---|---:|---:|---|",
    ]
    for metric, results in rows.items():
        stats = loss_stats(metric, results)
        best = best_hand_made(stats, metric)
        if best is None or ("searched", metric) not in stats:
            continue
        gain, spread, verdict = versus(stats, metric, best)
        shown = {
            loss: "{:.2f} +- {:.2f}".format(*stats[(loss, metric)])
            for loss in ("ce", best, "searched")
            if (loss, metric) in stats
        }
        lines.append(
            f"| {metric} | {shown.get('ce', '-')} | {best} {shown[best]} | {shown['searched']} | "
            f"{gain:+.2f} ({spread:.2f}) | {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--metrics", nargs="+", default=list(METRICS), choices=sorted({*METRICS, *list_specs()}),
        help="the six metrics and the built-in specs pooled over images (dice, fbeta, ...)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--losses", nargs="+", default=list(LOSSES), choices=[*BASELINES, *PER_METRIC],
        help="run these (default: ce searched preset identity); the table shows every finished run",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="retrains at once, each on cores / jobs threads (logs in their seed folders)",
    )  # fmt: skip
    parser.add_argument("--work", default=str(REPO / "results" / "quality"))
    parser.add_argument("--table-only", action="store_true", help="print what has finished")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    for metric in args.metrics:
        try:
            spec_target(metric)  # a per-image or band spec is refused before any run
        except ValueError as error:
            parser.error(str(error))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_all(args.metrics, args.losses, args.seeds, args.jobs, work)
    tables, rows = [], {}
    for metric in args.metrics:
        rows[metric] = collect(metric, args.seeds, work)
        tables.append(table(metric, rows[metric], exports_ce(metric, work)))
        (work / "quality.md").write_text("\n\n".join(tables) + "\n")  # partial results too
    tables.append(race(rows))
    (work / "quality.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    sys.exit(main())
