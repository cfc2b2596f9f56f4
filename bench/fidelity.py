"""Proxy fidelity: does the proxy's ranking of losses hold at the retrain budget?

For a finished search: `--losses` (default 8) of its searched losses spread over its reward range
(the full-budget search trials with distinct raw vectors, taken at evenly spaced reward ranks,
the lowest and the highest included), plus cross-entropy, each retrained once with the retrain
settings of the search's dataset (`./launch.sh retrain`, the profile's `retrain:` section).
Every proxy reward is the one at the search's seed (CE gets one proxy trial at that seed, as
the searched losses had). Prints Kendall's tau and Spearman's rho between the proxy reward and
the retrained metric, and writes fidelity.csv and the scatter plot fidelity.png under --work.
A low correlation says the proxy ranks losses differently from a full training: trust its
winners less, or make the proxy longer.

--fractions F,F,...: the same losses also at the search's confirmation fidelities (the retrain's
network and crops for F x its iterations, at the search seed, scored on the reward split: what
the confirmation round trains at search.confirm_fidelity=F), and a second table, one row per
fidelity (the proxy, each F, the full retrain): its cost per loss in proxy-iteration equivalents
(iterations x the retrain network's seconds per iteration over the proxy's, timed back to back on
one thread), Kendall's tau against the retrain, and the top-1 regret: how far below the
retrain's best loss the fidelity's favourite retrains, in points.

The retrains live in fixed folders under --work (default: RUN_DIR/fidelity): a rerun skips the
finished ones and resumes interrupted ones; --table-only reports what has finished. --jobs N
runs N retrains at once, each on cores / N threads with its log in its folder.

Run: ./launch.sh bench fidelity RUN_DIR [--losses 8] [--seed 0] [--jobs 1] [--work DIR]
                                 [--fractions F,F,...] [--table-only] [key=value ...]
                                 (key=value: retrain overrides, e.g. retrain.fit.iterations=...)
"""

import argparse
import csv
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path

import scipy.stats
import torch
import yaml
from omegaconf import OmegaConf
from quality import finished_run, launch, threads_per_job  # bench/quality.py: same runs

import data  # noqa: F401  (first: the torchvision compatibility import)
from experiments.config import fail, parse_overrides, set_key
from search import config as configs
from search.config import confirm_iterations
from search.space import initial_raw, raw_keys
from search.steps import loss_section
from search.trial import run_trial


def pick_losses(trials: list[dict], count: int, full_iterations: int) -> list[dict]:
    """`count` rows of trials.csv spread over the reward range: the successful search trials
    trained to the full budget, one per raw vector, at evenly spaced ranks of their reward."""
    rows, seen = [], set()
    for row in sorted(trials, key=lambda r: float(r["reward"] or "nan")):
        full = int(row.get("iterations") or full_iterations) == full_iterations
        raw = tuple(row[key] for key in row if key.startswith("raw_"))
        if row["phase"] == "search" and row["status"] == "ok" and full and raw not in seen:
            rows.append(row)
            seen.add(raw)
    if len(rows) <= count:
        return rows
    ranks = sorted({round(i * (len(rows) - 1) / (count - 1)) for i in range(count)})
    return [rows[i] for i in ranks]


def correlations(proxy: list[float], retrained: list[float]) -> tuple[float, float]:
    """(Kendall's tau-b, Spearman's rho) of the two rankings."""
    tau = scipy.stats.kendalltau(proxy, retrained).statistic
    rho = scipy.stats.spearmanr(proxy, retrained).statistic
    return float(tau), float(rho)


def ce_proxy_reward(cfg: configs.Config, work: Path, run: bool) -> float | None:
    """Cross-entropy's proxy reward at the search seed: one proxy trial, kept in --work."""
    path = work / "ce-proxy.json"
    if not path.is_file() and not run:
        return None
    if not path.is_file():
        print("[fidelity] a cross-entropy proxy trial at the search seed", flush=True)
        raw = initial_raw(cfg.search.metric, cfg.search.ce_mix)  # unused by CE
        result = run_trial(cfg, raw, cfg.search.seed, loss="ce")
        if result["status"] != "ok":
            raise RuntimeError(f"the cross-entropy proxy trial failed: {result['reason']}")
        path.write_text(json.dumps(result))
    return json.loads(path.read_text())[cfg.search.metric]


def confirm_trial(
    name: str, raw: list[float], loss: str, cfg: configs.Config, fraction: float, work: Path
) -> dict | None:
    """One loss at the confirmation fidelity `fraction`, at the search seed, as the search's
    confirmation round trains it; kept under `work` (None: not run yet and cfg unset)."""
    path = work / f"fraction-{fraction:g}" / f"{name}.json"
    if not path.is_file() and cfg is not None:
        print(f"[fidelity] {name} at confirmation fidelity {fraction:g}", flush=True)
        at = replace(cfg, search=replace(cfg.search, confirm_fidelity=fraction))
        result = run_trial(at, raw, cfg.search.seed, loss=loss, fidelity="confirm")
        if result["status"] != "ok":
            raise RuntimeError(f"{name} at fidelity {fraction:g} failed: {result['reason']}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result | {"iterations": confirm_iterations(at)}))
    return json.loads(path.read_text()) if path.is_file() else None


def with_retrain_overrides(cfg: configs.Config, overrides: list[str]) -> configs.Config:
    """The search config whose confirm: section is the retrains' training: the dataset
    profile's retrain: section as the retrains read it now (a run folder may predate confirm:),
    with the bench's retrain.* overrides of the training (not of the evaluation)."""
    trains = {f.name for f in fields(configs.ConfirmSettings)}
    profile = configs.resolve(cfg.search.metric, {"data": cfg.data.name}, cfg.data.root)
    config = OmegaConf.structured(replace(cfg, confirm=profile.confirm))
    for key, value in parse_overrides(overrides).items():
        section, _, rest = key.partition(".")
        if section == "retrain" and rest.split(".")[0] in trains:
            set_key(config, f"confirm.{rest}", value, configs.OPEN_MAPPINGS)
    return OmegaConf.to_object(config)


def fidelity_rows(rows: list[dict], costs: dict[str, float]) -> list[dict]:
    """One row per fidelity (a column of `rows` besides loss and retrained): its cost per loss
    (`costs`), Kendall's tau against the retrained metric and the top-1 regret in points."""
    retrained = [r["retrained"] for r in rows]
    table = []
    for fidelity, cost in costs.items():
        scores = [r[fidelity] for r in rows]
        tau = scipy.stats.kendalltau(scores, retrained).statistic
        favourite = max(range(len(rows)), key=lambda i: scores[i])
        regret = 100 * (max(retrained) - retrained[favourite])
        table.append({"fidelity": fidelity, "cost": cost, "tau": float(tau), "regret": regret})
    return table


def retrain(name: str, loss: dict, cfg: configs.Config, args: argparse.Namespace) -> None:
    """The retrain of `loss` under --work/name, run or resumed unless it has finished."""
    work = Path(args.work)
    folder = work / name
    if finished_run(folder, "final.json"):
        return
    threads = threads_per_job(args.jobs)
    log = folder / "retrain.log" if threads else None
    started = list(folder.glob("*/checkpoints"))
    if started:
        launch("retrain", "--resume", str(started[0].parent), log=log, threads=threads)
        return
    file = work / f"{name}.yaml"
    dataset = {"name": cfg.data.name, "params": dict(cfg.data.params)}
    file.write_text(yaml.safe_dump({"loss": loss, "data": dataset}, sort_keys=False))
    launch(
        "retrain", str(file), f"data.root={cfg.data.root}", f"retrain.fit.seed={args.seed}",
        *args.overrides, f"--results={folder}", log=log, threads=threads,
    )  # fmt: skip


def retrained(name: str, args: argparse.Namespace) -> dict | None:
    """final.json of a finished retrain, else None."""
    done = finished_run(Path(args.work) / name, "final.json")
    return json.loads((done / "final.json").read_text()) if done else None


def scatter(rows: list[dict], metric: str, tau: float, rho: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        ce = row["loss"] == "cross-entropy"
        x, y = 100 * row["proxy"], 100 * row["retrained"]
        ax.scatter(x, y, color="tab:red" if ce else "tab:blue", marker="s" if ce else "o")
        ax.annotate(row["loss"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(
        title=f"proxy vs retrain, {metric}: Kendall tau {tau:.2f}, Spearman rho {rho:.2f}",
        xlabel=f"proxy reward, {metric} (%)",
        ylabel=f"retrained {metric} (%)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def fractions(text: str) -> list[float]:
    """--fractions 0.1,0.3 -> [0.1, 0.3]."""
    return [float(part) for part in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a finished search run folder")
    parser.add_argument("--losses", type=int, default=8, help="searched losses to retrain")
    parser.add_argument("--seed", type=int, default=0, help="the retrains' seed")
    parser.add_argument("--jobs", type=int, default=1, help="retrains at once (cores / N threads)")
    parser.add_argument("--work", help="where the retrains go (default RUN_DIR/fidelity)")
    parser.add_argument(
        "--fractions", type=fractions, default=[], help="confirmation fidelities, e.g. 0.1,0.3"
    )
    parser.add_argument("--table-only", action="store_true", help="report what has finished")
    parser.add_argument("overrides", nargs="*", help="key=value for every retrain")
    parser.error = fail  # one line, exit 2
    args = parser.parse_intermixed_args()
    run_dir = Path(args.run_dir).resolve()
    if not (run_dir / "summary.json").is_file() or not (run_dir / "trials.csv").is_file():
        fail(f"{run_dir} is not a finished search run folder (no summary.json and trials.csv)")
    if args.losses < 2:
        fail(f"--losses must be >= 2 (a rank correlation needs two), got {args.losses}")
    if args.jobs < 1:
        fail(f"--jobs must be >= 1, got {args.jobs}")
    if any(not 0 < f <= 1 for f in args.fractions):
        fail(f"--fractions must be in (0, 1], got {args.fractions}")
    cfg = with_retrain_overrides(configs.load(run_dir / "config.yaml"), args.overrides)
    metric = cfg.search.metric
    work = Path(args.work or run_dir / "fidelity").resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    with open(run_dir / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    picked = pick_losses(trials, args.losses, cfg.proxy.fit.iterations)
    losses = {}  # name -> (loss section, proxy reward, raw vector)
    for row in picked:
        raw = [float(row[key]) for key in raw_keys(sum(k.startswith("raw_") for k in row))]
        name = f"step{row['step']}-sample{row['sample']}"
        losses[name] = (loss_section(cfg.search, raw), float(row["reward"]), raw)
    proxy = ce_proxy_reward(cfg, work, run=not args.table_only)
    losses["cross-entropy"] = ({"name": "ce"}, proxy, initial_raw(metric, cfg.search.ce_mix))
    if not args.table_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            pending = [pool.submit(retrain, n, loss[0], cfg, args) for n, loss in losses.items()]
            for future in pending:
                future.result()  # the first failure stops the benchmark with its error
    rows, confirmed = [], {f: [] for f in args.fractions}  # fraction -> its trials
    for name, (loss, proxy, raw) in losses.items():
        final = retrained(name, args)
        kind = "ce" if loss["name"] == "ce" else "surrogate"
        runs = {
            f: confirm_trial(name, raw, kind, None if args.table_only else cfg, f, work)
            for f in args.fractions
        }
        if final and proxy is not None and all(runs.values()):
            rows.append({"loss": name, "proxy": proxy, "retrained": final[metric]})
            rows[-1] |= {f"confirm {f:g}": run[metric] for f, run in runs.items()}
            for f, run in runs.items():
                confirmed[f].append(run)
    with open(work / "fidelity.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]) if rows else ["loss", "proxy", "retrained"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"| loss | proxy {metric} | retrained {metric} |\n|---|---:|---:|")
    for row in sorted(rows, key=lambda r: r["proxy"]):
        print(f"| {row['loss']} | {100 * row['proxy']:.2f} | {100 * row['retrained']:.2f} |")
    if len(rows) < 2:
        print(f"[fidelity] {len(rows)} finished retrain(s): no correlation yet")
        return 0
    tau, rho = correlations([r["proxy"] for r in rows], [r["retrained"] for r in rows])
    scatter(rows, metric, tau, rho, work / "fidelity.png")
    print(
        f"\n{metric}, {len(rows)} losses of {run_dir.name}: Kendall tau {tau:.2f}, "
        f"Spearman rho {rho:.2f} (proxy reward vs retrained {metric}); {work / 'fidelity.png'}"
    )
    if args.fractions:
        iterations = retrained(rows[0]["loss"], args)["iteration"]
        print_fidelities(rows, cfg, confirmed, iterations, work)
    return 0


def iteration_cost(cfg: configs.Config, work: Path) -> float:
    """Seconds per training iteration of the confirmation's network over the proxy's, timed
    back to back in this process on one thread (CE on both: the networks and crops make the
    difference), kept in --work so that a rerun prints the same costs."""
    path = work / "iteration-cost.json"
    if not path.is_file():
        print("[fidelity] timing the proxy's and the retrain's training iterations", flush=True)
        raw, threads = initial_raw(cfg.search.metric, cfg.search.ce_mix), torch.get_num_threads()
        torch.set_num_threads(1)
        at = replace(cfg, search=replace(cfg.search, confirm_fidelity=1.0))
        seconds = {}
        for fidelity, schedule in (("proxy", cfg.proxy.fit.iterations), ("confirm", None)):
            stop = min(COST_ITERATIONS, schedule or confirm_iterations(at))
            result = run_trial(at, raw, 0, loss="ce", stop=stop, fidelity=fidelity)
            if result["status"] != "ok":
                raise RuntimeError(f"timing the {fidelity} training failed: {result['reason']}")
            seconds[fidelity] = result["train_s"] / stop
        torch.set_num_threads(threads)
        path.write_text(json.dumps(seconds))
    seconds = json.loads(path.read_text())
    return seconds["confirm"] / seconds["proxy"]


COST_ITERATIONS = 60  # timed per network; the first one (allocations) included


def print_fidelities(rows, cfg, confirmed: dict, retrain_iterations: int, work: Path) -> None:
    """The second table: each fidelity's cost per loss, Kendall tau and top-1 regret. Costs in
    proxy-iteration equivalents: iterations x the retrain network's time per iteration over the
    proxy's (iteration_cost)."""
    rate = iteration_cost(cfg, work)
    costs = {"proxy": cfg.proxy.fit.iterations}
    costs |= {f"confirm {f:g}": trials[0]["iterations"] * rate for f, trials in confirmed.items()}
    costs["retrained"] = retrain_iterations * rate
    print(f"\n(one retrain-network iteration costs {rate:.2f} proxy iterations on one thread)")
    print("\n| fidelity | cost (proxy it.) | Kendall tau vs retrain | top-1 regret (points) |")
    print("|---|---:|---:|---:|")
    for row in fidelity_rows(rows, costs):
        cost, tau, regret = f"{row['cost']:,.0f}", f"{row['tau']:.2f}", f"{row['regret']:.2f}"
        print(f"| {row['fidelity']} | {cost} | {tau} | {regret} |")


if __name__ == "__main__":
    sys.exit(main())
