"""`./launch.sh report RUN_DIR [RUN_DIR ...]`: PNG plots and a Markdown summary (report.md) in
each run folder, the summary printed. Works on a search that is still running."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

from results import plots  # noqa: E402
from results.files import atomic_path, comparison_markdown, write_text  # noqa: E402
from results.runs import load_retrain, load_search, run_kind  # noqa: E402
from surrogates import METRIC_COLUMNS  # noqa: E402


def _save(fig, path: Path) -> str:
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plots.plt.close(fig)
    return f"plots/{path.name}"


def search_report(path: Path) -> str:
    run = load_search(path)
    state = "finished" if run.finished else ("stopped: " + run.failed if run.failed else "running")
    lines = [f"# {run.metric} search {path.name} ({state})", ""]
    trials = run.trials
    if trials.empty:
        return "\n".join([*lines, "No finished trial yet."])
    failed = int((trials.status != "ok").sum())
    lines.append(
        f"{len(trials)} trials finished, {failed} failed; data {run.config['data']['name']}"
    )
    if run.finished:
        s = run.summary
        versus = ", ".join(f"{k} {100 * v:.2f}" for k, v in s.get("baselines", {}).items())
        lines.append(
            f"\nBest: **{s['best']}**, {run.metric} {100 * s['reward']:.2f} over {s['seeds']} "
            f"seed(s) vs {versus or 'no baseline'}; exported `{Path(s['export']).name}`; "
            f"{s.get('iterations', '?')} proxy training iterations."
        )
    figures = [_save(plots.plot_rewards(run), path / "plots" / "rewards.png")]
    if not run.policy.empty:
        figures.append(_save(plots.plot_curves(run), path / "plots" / "curves.png"))
        figures.append(_save(plots.plot_parameters(run), path / "plots" / "parameters.png"))
        policy = run.policy.set_index("step")
        table = (policy[["reward_mean", "reward_std", "reward_max", "best_so_far"]] * 100).round(2)
        if "rung_tau" in policy and policy.rung_tau.notna().any():
            # successive halving: did the first rung rank the samples as the full budget did?
            table["rung_tau"] = policy.rung_tau.round(2)
        if "iterations" in policy:
            table["iterations"] = policy.iterations
        lines += ["", "## Steps", "", table.to_markdown()]
    if "iterations" in trials:  # successive halving: lower rungs score fewer iterations
        trials = trials[trials.iterations == trials.iterations.max()]
    top = trials[trials.status == "ok"].nlargest(5, "reward").fillna({"candidate": ""})
    columns = ["phase", "step", "sample", "candidate", "seed", "reward", *run.metric_columns]
    percent = [*run.metric_columns, "reward"]
    lines += ["", "## Top trials (%)", "", _percent(top[columns], percent).to_markdown(index=False)]
    candidates = run.candidates()
    if not candidates.empty:
        lines += ["", "## Confirmation round", "", _percent(candidates).to_markdown(index=False)]
    lines += ["", "## Plots", "", *[f"![{f}]({f})" for f in figures]]
    return "\n".join(lines)


def retrain_report(path: Path) -> str:
    run = load_retrain(path)
    state = "finished" if run.final else "running"
    lines = [f"# retrain {path.name} ({state})", "", f"loss: `{run.config['loss']}`"]
    if run.metrics.empty:
        return "\n".join([*lines, "", "No evaluation yet."])
    figures = [_save(plots.plot_metrics(run), path / "plots" / "metrics.png")]
    evaluations = _percent(run.metrics, run.metric_columns)
    lines += ["", "## Evaluations (%)", "", evaluations.to_markdown(index=False)]
    if not run.classes.empty:
        last = run.classes[run.classes.iteration == run.classes.iteration.max()]
        table = last.drop(columns=["iteration", "class"]).set_index("name")
        figures.append(_save(plots.plot_classes(run), path / "plots" / "classes.png"))
        heading = f"## Per class at iteration {int(last.iteration.iloc[0])} (%)"
        lines += ["", heading, "", (100 * table).round(2).to_markdown()]
    if run.comparison:
        figures.append(_save(plots.plot_comparison(run), path / "plots" / "comparison.png"))
        lines += ["", "## CE vs searched", "", comparison_markdown(run.comparison)]
    lines += ["", "## Plots", "", *[f"![{f}]({f})" for f in figures]]
    return "\n".join(lines)


def _percent(table, metrics: list[str] = ()):
    """Metric and reward columns in % (`metrics`: more columns, a metric spec's)."""
    table = table.copy()
    for column in table.columns:
        if column in (*METRIC_COLUMNS, *metrics, "reward") or column.startswith("reward_"):
            table[column] = (100 * table[column]).round(2)
    return table


def report(path: str | Path) -> str:
    path = Path(path)
    text = search_report(path) if run_kind(path) == "search" else retrain_report(path)
    write_text(path / "report.md", text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("error: usage: ./launch.sh report RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for path in paths:  # all checked before anything is written
        if not (Path(path) / "config.yaml").is_file():
            print(f"error: {path} is not a run folder (no config.yaml)", file=sys.stderr)
            return 2
    for path in paths:
        print(report(path))
        print(f"\n[report] wrote {Path(path) / 'report.md'} and plots/\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
