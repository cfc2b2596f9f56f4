"""The plots a researcher would otherwise draw by hand. Each function returns a matplotlib Figure
with a title, labelled axes and a legend; `report.py` saves them as PNGs.

search:  plot_rewards (reward per step), plot_curves (the policy mean's h(x) per step against the
         identity), plot_parameters (raw parameter trajectories)
retrain: plot_metrics (every metric over iterations), plot_classes (per class at the last
         evaluation, by class name), plot_comparison (CE vs searched bars)
"""

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from results.runs import RetrainRun, SearchRun
from surrogates import spec_curves, spec_from_dict

# the curves of each metric's surrogate, in the order of their control points in theta (SPEC A§2)
_REGION = ["h_I (intersection)", "h_U (union)"]
CURVE_NAMES = {
    **dict.fromkeys(["miou", "fwiou", "biou"], _REGION),
    **dict.fromkeys(["macc", "gacc"], ["h"]),
    "bf1": ["h1", "h2", "h3", "h4"],
}


def bezier_curve(control: list[float], samples: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) along a chain of quadratic Bezier pieces from (0,0) to (1,1) with the given control
    points [x1, y1, x2, y2, ...] (SPEC A§3.1), traced parametrically."""
    points = np.array([[0.0, 0.0], *np.reshape(control, (-1, 2)), [1.0, 1.0]])
    t = np.linspace(0, 1, samples)[:, None]
    pieces = [
        (1 - t) ** 2 * points[k] + 2 * t * (1 - t) * points[k + 1] + t**2 * points[k + 2]
        for k in range(0, len(points) - 2, 2)
    ]
    xy = np.concatenate(pieces)
    return xy[:, 0], xy[:, 1]


def plot_rewards(run: SearchRun) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    trials = run.trials[run.trials.phase == "search"]
    if "iterations" in trials:  # successive halving: each sample once, as the update used it
        last = trials.reward_used.notna() | (trials.iterations == trials.iterations.max())
        trials = trials[last].assign(reward=trials.reward_used.fillna(trials.reward))
    ok, failed = trials[trials.status == "ok"], trials[trials.status != "ok"]
    ax.scatter(ok.step, 100 * ok.reward, s=14, alpha=0.5, color="tab:blue", label="samples")
    if not failed.empty:
        ax.scatter(
            failed.step, 100 * failed.reward_used, marker="x", color="tab:red",
            label="failed (failure reward)",
        )  # fmt: skip
    if not run.policy.empty:
        policy = run.policy
        ax.plot(policy.step, 100 * policy.reward_mean, "o-", color="tab:blue", label="step mean")
        ax.fill_between(
            policy.step,
            100 * (policy.reward_mean - policy.reward_std),
            100 * (policy.reward_mean + policy.reward_std),
            alpha=0.15,
            color="tab:blue",
            label="mean +- std",
        )
        ax.plot(policy.step, 100 * policy.reward_of_mean, "s--", color="tab:green",
                label="policy mean's reward")  # fmt: skip
        ax.plot(policy.step, 100 * policy.best_so_far, "k:", label="best so far")
    split = run.config["search"].get("reward_split", "holdout")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(
        title=f"{run.metric} search: reward per step ({run.path.name})",
        xlabel="step",
        ylabel=f"{run.metric} on {split} (%)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curve_names(run: SearchRun) -> list[str]:
    """The surrogate's curves of a search, in theta's order: a metric spec's are those its
    formula reads (surrogates.spec_curves: h_TP, h_FP)."""
    spec = run.config["search"].get("metric_spec")
    if not spec:
        return CURVE_NAMES[run.metric]
    names = {"tp": "h_TP (true positives)", "fp": "h_FP (false positives)"}
    return [names[curve] for curve in spec_curves(spec_from_dict(spec))]


def plot_curves(run: SearchRun) -> plt.Figure:
    names = curve_names(run)
    curves = len(names)
    fig, axes = plt.subplots(1, curves, figsize=(4.2 * curves, 4.2), squeeze=False)
    theta_columns = [c for c in run.policy.columns if c.startswith("theta_")]
    colours = plt.cm.viridis(np.linspace(0, 1, max(1, len(run.policy))))
    for k, ax in enumerate(axes[0]):
        ax.plot([0, 1], [0, 1], "k--", label="identity")
        for (_, row), colour in zip(run.policy.iterrows(), colours, strict=False):
            theta = row[theta_columns].to_numpy(float)  # the mean's control points
            per_curve = len(theta) // curves
            x, y = bezier_curve(theta[k * per_curve : (k + 1) * per_curve])
            ax.plot(x, y, color=colour, label=f"mean after step {int(row.step)}")
        if run.summary and run.summary["theta"]:  # empty when cross-entropy won
            theta = np.asarray(run.summary["theta"])
            per_curve = len(theta) // curves
            x, y = bezier_curve(theta[k * per_curve : (k + 1) * per_curve])
            ax.plot(x, y, color="tab:red", lw=2.5, label=f"exported ({run.summary['best']})")
        ax.set(
            title=names[k],
            xlabel="x (softmax probability)",
            ylabel="h(x)",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.set_aspect("equal")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{run.metric} search: learned curves of the policy mean")
    fig.tight_layout()
    return fig


def plot_parameters(run: SearchRun) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for column in [c for c in run.policy.columns if c.startswith("mu_")]:
        ax.plot(run.policy.step, run.policy[column], "o-", label=column.replace("mu_", "raw "))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(
        title=f"{run.metric} search: policy mean per raw parameter",
        xlabel="step",
        ylabel="raw value in [0, 1] (after the step's update)",
        ylim=(0, 1),
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_metrics(run: RetrainRun) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for metric in run.metric_columns:
        style = "o-" if metric == run.target else ".-"
        label = f"{metric} (target)" if metric == run.target else metric
        ax.plot(run.metrics.iteration, 100 * run.metrics[metric], style, label=label)
    split = run.config["retrain"].get("eval_split", "val")
    ax.set(
        title=f"retrain {run.path.name}: metrics over training",
        xlabel="iteration",
        ylabel=f"metric on {split} (%)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_classes(run: RetrainRun) -> plt.Figure:
    last = run.classes[run.classes.iteration == run.classes.iteration.max()]
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(last)), 4.5))
    positions = np.arange(len(last))
    for i, (column, label) in enumerate([("iou", "IoU"), ("biou", "BIoU"), ("bf1", "BF1")]):
        ax.bar(positions + (i - 1) * 0.27, 100 * last[column], 0.27, label=label)
    ax.set_xticks(positions, last.name, rotation=60, ha="right", fontsize=8)
    iteration = int(last.iteration.iloc[0])
    ax.set(title=f"retrain {run.path.name}: per class at iteration {iteration}", ylabel="%")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def comparison_table(comparison: dict) -> pd.DataFrame:
    """comparison.json -> a DataFrame indexed by loss, columns the metrics (in %)."""
    table = pd.DataFrame.from_dict(comparison["losses"], orient="index")[comparison["metrics"]]
    return 100 * table.rename_axis("loss")


def plot_comparison(run: RetrainRun) -> plt.Figure:
    table = comparison_table(run.comparison)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(table)
    positions = np.arange(len(table.columns))
    for i, (loss, values) in enumerate(table.iterrows()):
        ax.bar(positions + i * width, values, width, label=loss)
    labels = [f"{m}*" if m == run.target else m for m in table.columns]
    ax.set_xticks(positions + width * (len(table) - 1) / 2, labels)
    low = float(table.to_numpy().min())
    ax.set(
        title=f"CE vs searched loss ({run.path.name}); * = target metric",
        xlabel="metric",
        ylabel="value (%)",
        ylim=(max(0.0, low - 10), 100),
    )
    ax.legend()
    fig.tight_layout()
    return fig
