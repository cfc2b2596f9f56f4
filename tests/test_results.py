"""results/: loaders on finished and partial run folders, the plots, `./launch.sh report` end to
end, and the notebook executed against a tiny run."""

import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_searcher import drive, rung_result, tiny_config, toy_result, tune_searcher

from experiments.config import to_yaml
from results import compare, load_retrain, load_search, plots
from retrain import run as retrain_run
from search.space import raw_of

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished search, a search stopped in its second step, and a retrain with its CE
    comparison, all written by the real code (the searches with toy rewards)."""
    root = tmp_path_factory.mktemp("runs")
    finished, partial = root / "search-finished", root / "search-partial"
    for path in (finished, partial):
        path.mkdir()
        (path / "config.yaml").write_text(to_yaml(tiny_config(root)))
    halving = tiny_config(root, **{"search.rungs": "2"})  # with successive halving
    (finished / "config.yaml").write_text(to_yaml(halving))
    drive(tune_searcher(halving, finished), results=rung_result)
    searcher = tune_searcher(tiny_config(root), partial)
    for i in range(6):  # step 1 and two trials of step 2
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", toy_result(raw_of(config)))

    tiny = [
        "data.params={size: 32, train: 48, holdout: 12, val: 8, test: 4}",
        "retrain.crop_size=24",
        "retrain.model_args={width: 8}",
        "retrain.fit.iterations=20",
        "retrain.fit.batch_size=4",
        "retrain.fit.eval_every=10",
        f"data.root={root / 'data'}",
    ]
    args = ["miou_bezier.yaml", *tiny, "--baseline", "ce", f"--results={root / 'retrain'}"]
    assert retrain_run.main(args) == 0
    (retrained,) = (root / "retrain").glob("miou_bezier-*")
    return {"finished": finished, "partial": partial, "retrain": retrained}


def test_load_a_finished_and_a_partial_search(runs):
    done = load_search(runs["finished"])
    assert done.finished and done.metric == "miou" and done.failed is None
    assert list(done.policy.step) == [1, 2]
    search = done.trials[done.trials.phase == "search"]
    assert len(search[search.rung == 0]) == 2 * 4 and len(search[search.rung == 1]) >= 2 * 2
    assert len(done.trials) == len(search) + len(done.candidates()) * 2
    assert done.candidates().reward_mean.iloc[0] == pytest.approx(done.summary["reward"])

    partial = load_search(runs["partial"])
    assert not partial.finished and partial.summary is None
    assert len(partial.trials) == 6 and list(partial.policy.step) == [1]
    assert partial.candidates().empty


def test_load_a_retrain_and_compare_runs(runs):
    run = load_retrain(runs["retrain"])
    assert list(run.metrics.iteration) == [10, 20] and run.final["iteration"] == 20
    assert run.target == "miou" and list(run.comparison["losses"]) == ["ce", "miou_bezier"]
    assert run.comparison["losses"]["miou_bezier"]["miou"] == pytest.approx(run.final["miou"])
    # per class, by the dataset's names, at each evaluation; the class IoUs average to mIoU
    from data.shapes import CLASS_NAMES

    assert list(run.classes.name) == 2 * list(CLASS_NAMES)
    last = run.classes[run.classes.iteration == 20]
    assert last.iou.mean() == pytest.approx(run.final["miou"])  # every shapes class is in val
    assert last.freq.sum() == pytest.approx(1.0)
    iou = last.tp / (last.tp + last.fp + last.fn)  # the pooled pixel counts give the IoUs
    assert list(iou) == pytest.approx(list(last.iou))
    bars = plots.comparison_table(run.comparison)  # what the bar chart draws, in %
    assert bars.loc["miou_bezier", "miou"] == pytest.approx(100 * run.final["miou"])
    table = compare([runs["finished"], runs["partial"], runs["retrain"]])
    assert list(table.kind) == ["search", "search", "retrain"]
    assert list(table.finished) == [True, False, True]
    assert table.loc[2, "miou"] == pytest.approx(run.metrics.miou.iloc[-1])
    with pytest.raises(ValueError, match="not a search run"):
        load_search(runs["retrain"])


def test_plots_have_titles_and_labels(runs):
    search = load_search(runs["finished"])
    figure = plots.plot_rewards(search)
    assert figure.axes[0].get_title().startswith("miou search: reward per step")
    assert figure.axes[0].get_ylabel() == "miou on holdout (%)"
    curves = plots.plot_curves(search)
    assert [ax.get_title() for ax in curves.axes] == ["h_I (intersection)", "h_U (union)"]
    assert plots.plot_metrics(load_retrain(runs["retrain"])).axes[0].get_xlabel() == "iteration"
    # the Bezier trace starts at (0,0), ends at (1,1) and follows the identity's diagonal
    x, y = plots.bezier_curve([0.25, 0.25, 0.5, 0.5, 0.75, 0.75])
    assert (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1) and abs(x - y).max() < 1e-12


def test_report_command_writes_pngs_and_markdown(runs):
    paths = [str(runs[k]) for k in ("finished", "partial", "retrain")]
    done = subprocess.run(
        [str(REPO / "launch.sh"), "report", *paths], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "# miou search search-finished (finished)" in done.stdout
    assert "(running)" in done.stdout and "## CE vs searched" in done.stdout
    assert "## Per class at iteration 20 (%)" in done.stdout and "| triangle " in done.stdout
    assert "proxy training iterations" in done.stdout and "rung_tau" in done.stdout
    expected = {
        "finished": ["rewards", "curves", "parameters"],
        "partial": ["rewards", "curves", "parameters"],
        "retrain": ["metrics", "classes", "comparison"],
    }
    for key, names in expected.items():
        assert (runs[key] / "report.md").is_file()
        for name in names:
            png = runs[key] / "plots" / f"{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_rejects_a_folder_that_is_not_a_run(tmp_path):
    done = subprocess.run(
        [str(REPO / "launch.sh"), "report", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "is not a run folder" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("which", ["finished", "partial"])
def test_notebook_runs_on_a_tiny_run(runs, which):
    notebook = nbformat.read(REPO / "results" / "notebooks" / "search_report.ipynb", as_version=4)
    os.environ["SLS_RUN"] = str(runs[which])
    try:
        NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        del os.environ["SLS_RUN"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{runs[which].name} | metric: miou | finished: {which == 'finished'}" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
