"""Searching a loss for a metric spec (issue 32, item 5): `./launch.sh search dice`, a built-in
spec with constants (`search.metric_args`), a spec file; the reward is the spec's exact value,
the confirmation round holds CE and the hand-made loss, the export carries the spec, and the
retrain of the export evaluates it. The paper's six keep their path (tests/test_searcher.py)."""

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from test_searcher import drive, read_csv, tiny_config, toy_result, tune_searcher

from experiments.config import to_yaml
from search import config as configs
from search import run as search_run
from search.space import initial_raw, raw_of, to_theta
from search.steps import CROSS_ENTROPY, HANDMADE_BASELINES
from surrogates import (
    METRIC_COLUMNS,
    SurrogateLoss,
    build_loss,
    identity_control,
    list_losses,
    load_spec,
)

REPO = Path(__file__).resolve().parent.parent
SHAPES = "data.params={size: 32, train: 24, holdout: 8, val: 4, test: 4}"


def dice_search(tmp_path, results=None, **overrides):
    """A tiny dice search driven like Tune, with toy rewards; its run folder."""
    cfg = tiny_config(tmp_path, "dice", **overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    drive(tune_searcher(cfg, run_dir), results or (lambda c: toy_result(raw_of(c), "dice")))
    return cfg, run_dir


def test_a_dice_search_confirms_with_ce_and_the_dice_loss_and_exports_the_spec(tmp_path):
    cfg, run_dir = dice_search(tmp_path)
    spec = load_spec("dice")
    assert cfg.search.metric == "dice" and cfg.search.metric_spec == spec.to_dict()
    # the search space: the spec's two curves (h_TP, h_FP), identity at the start
    assert to_theta(spec, initial_raw(spec)) == pytest.approx(identity_control(2) * 2)
    rows = read_csv(run_dir / "trials.csv")
    assert list(rows[0])[13 : 13 + len(METRIC_COLUMNS) + 1] == [*METRIC_COLUMNS, "dice"]
    assert all(r["reward"] == r["dice"] for r in rows)  # the reward is the spec's column
    confirm = {r["candidate"]: r for r in rows if r["phase"] == "confirm"}
    assert {"dice loss", CROSS_ENTROPY, "final mean"} <= set(confirm)
    assert confirm["dice loss"]["raw_0"] == "" and confirm["dice loss"]["theta_0"] == ""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["loss"] == "surrogate" and "dice loss" in summary["baselines"]
    exported = run_dir / "dice_bezier.yaml"
    doc = yaml.safe_load(exported.read_text())
    assert (
        doc["loss"]["metric"] == spec.to_dict()
        and doc["search"]["metric_spec"] == doc["loss"]["metric"]
    )
    loss = SurrogateLoss.from_file(exported, num_classes=7)
    assert loss.spec == spec and loss.theta == pytest.approx(summary["theta"], abs=1e-7)
    from retrain.config import eval_specs, resolve
    from retrain.train import make_loss

    retrain = resolve(exported, {}, data_root=str(tmp_path))  # what ./launch.sh retrain builds
    assert make_loss(retrain, 7).spec == spec and eval_specs(retrain) == [spec]


def test_when_the_dice_loss_wins_the_export_trains_it_and_keeps_the_spec(tmp_path):
    def results(config):  # the hand-made loss scores best
        return {"status": "ok", "reason": "", "dice": 0.9 if config.get("loss") == "dice" else 0.3}

    cfg, run_dir = dice_search(tmp_path, results)
    doc = yaml.safe_load((run_dir / "dice_bezier.yaml").read_text())
    assert doc["loss"] == {"name": "dice"} and doc["search"]["metric_spec"]["name"] == "dice"
    from retrain.config import resolve, target_metric

    retrain = resolve(run_dir / "dice_bezier.yaml", {}, data_root=str(tmp_path))
    assert retrain.retrain.metric_spec == load_spec("dice").to_dict()  # still evaluated
    assert target_metric(retrain) == "dice"


@pytest.mark.skipif("tversky" not in list_losses(), reason="the Tversky loss is not registered")
def test_a_tversky_search_holds_the_tversky_loss_with_the_spec_constants(tmp_path):
    def results(config):  # the hand-made loss scores best
        value = 0.9 if config.get("loss") == "tversky" else 0.3
        return {"status": "ok", "reason": "", "tversky": value}

    cfg = tiny_config(tmp_path, "tversky", **{"search.metric_args": "{alpha: 0.5}"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    drive(tune_searcher(cfg, run_dir), results)
    confirm = {r["candidate"] for r in read_csv(run_dir / "trials.csv") if r["phase"] == "confirm"}
    assert {"tversky loss", CROSS_ENTROPY} <= confirm
    doc = yaml.safe_load((run_dir / "tversky_bezier.yaml").read_text())
    assert doc["loss"] == {"name": "tversky", "alpha": 0.5, "beta": 0.7}
    loss = build_loss(**doc["loss"], num_classes=7)  # what the retrain builds
    assert (loss.alpha, loss.beta) == (0.5, 0.7)


def test_hand_made_baselines_are_the_registered_ones():
    assert HANDMADE_BASELINES["dice"] == HANDMADE_BASELINES["fbeta"] == "dice"
    cfg = configs.SearchConfig(metric="tversky", metric_spec=load_spec("tversky").to_dict())
    from search.steps import handmade_baselines

    expected = {"tversky loss": "tversky"} if "tversky" in list_losses() else {}
    assert handmade_baselines(cfg) == expected  # skipped until the loss exists
    assert handmade_baselines(configs.SearchConfig(metric="miou")) == {}  # the paper's path


def test_the_paper_metrics_keep_their_path(tmp_path):
    cfg = tiny_config(tmp_path, "miou")
    assert cfg.search.metric_spec == {} and configs.target(cfg.search) == "miou"
    assert configs.reward_columns(cfg.search) == list(METRIC_COLUMNS)
    assert configs.target_specs(configs.SearchConfig(metric="miou_image")) == []
    image = tiny_config(tmp_path, "miou_image")  # SegMetrics has its column: no extra spec
    assert configs.target_specs(image.search) == [] and image.search.metric_spec


def test_a_spec_file_with_constants_resolves_and_resumes_from_config_yaml(tmp_path):
    spec_file = tmp_path / "recall_heavy.yaml"
    spec_file.write_text(
        "per_class: tp / (tp + alpha * fp + beta * fn)\n"
        "constants: {alpha: 0.2, beta: 0.8}\nbackground: false\n"
    )
    cfg = tiny_config(tmp_path, str(spec_file), **{"search.metric_args": "{alpha: 0.1}"})
    spec = configs.target(cfg.search)
    assert cfg.search.metric == "recall_heavy" and spec.constants == {"alpha": 0.1, "beta": 0.8}
    run_dir = tmp_path / "recall_heavy-shapes"
    (run_dir / "tune").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    spec_file.unlink()  # --resume reads config.yaml alone
    args = search_run.parse_args(["--resume", str(run_dir)])
    resumed, _, where = search_run.plan(args)
    # the same search (cpu_slots is capped to this machine's cores at every start)
    assert where == run_dir and replace(resumed.search, cpu_slots=0) == cfg.search
    assert configs.target(resumed.search) == spec


def test_fbeta_takes_its_beta_from_metric_args(tmp_path):
    cfg = tiny_config(tmp_path, "fbeta", **{"search.metric_args": "{beta: 1}"})
    assert configs.target(cfg.search).constants == {"beta": 1.0}
    assert tiny_config(tmp_path, "fbeta").search.metric_spec["constants"] == {"beta": 2.0}


@pytest.mark.parametrize(
    "words,message",
    [
        (["dise"], "unknown metric 'dise'; valid: .*did you mean 'dice'"),
        (["fbeta", "search.metric_args={beta: -1}"], "constant beta of metric 'fbeta' must be"),
        (["fbeta", "search.metric_args={gama: 1}"], "unknown constant 'gama'; valid: beta"),
        (["miou", "search.metric_args={beta: 1}"], "miou has no constants"),
        (["FILE", "classes: avg"], "unknown classes 'avg'"),
        (["FILE", "per_class: tp / (tp + fp + fn)\nname: miou_image"], "is taken"),
        (["FILE", "per_class: fp / (tp + fp)"], "decreases as tp grows"),
        (["FILE", "per_class: tp / (tp + fp"], r"column 6: invalid syntax \('\(' was never closed"),
        (["nothing.yaml"], "metric file not found"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, words, message):
    if words[0] == "FILE":  # a spec file with these lines (a formula unless it has one)
        text = words[1] if "per_class" in words[1] else f"per_class: tp / (tp + fn)\n{words[1]}"
        (tmp_path / "bad.yaml").write_text(text + "\n")
        words = [str(tmp_path / "bad.yaml")]
    results = tmp_path / "results"
    argv = [*words, f"data.root={tmp_path}", SHAPES, f"--results={results}"]
    with pytest.raises(SystemExit) as exit_:
        search_run.main(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error: ") and re.search(message, lines[0]), lines
    # one line; a formula's syntax error adds the formula and a caret under the character
    assert len(lines) == 1 or (len(lines) == 3 and lines[2].strip() == "^"), lines
    assert not results.exists()


# --- end to end: ./launch.sh search dice, then ./launch.sh retrain of its export -------------

TINY_SEARCH = [
    "ppo.steps=1",
    "ppo.samples=2",
    "proxy.fit.iterations=4",
    "proxy.fit.batch_size=4",
    "proxy.crop_size=24",
    SHAPES,
    "search.tolerance=1",
    "search.confirm_top_k=0",
    "search.confirm_seeds=1",
    "search.rungs=1",
    "ray.dashboard=false",
]  # 2 samples, then the final mean, the dice loss and CE: 5 trials
TINY_RETRAIN = [
    SHAPES,
    "retrain.crop_size=24",
    "retrain.model_args={width: 8}",
    "retrain.fit.iterations=4",
    "retrain.fit.batch_size=4",
    "retrain.fit.eval_every=4",
    "retrain.fit.checkpoint_every=4",
    "retrain.fit.log_every=4",
]


def launch(*words):
    command = [str(REPO / "launch.sh"), *words]
    return subprocess.run(command, text=True, capture_output=True, timeout=600)


def test_search_dice_then_retrain_its_export_end_to_end(tmp_path):
    data = f"data.root={tmp_path / 'data'}"
    done = launch("search", "dice", *TINY_SEARCH, data, f"--results={tmp_path / 'search'}")
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (tmp_path / "search").iterdir()
    assert run_dir.name.startswith("dice-shapes-")
    rows = read_csv(run_dir / "trials.csv")
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    assert all(0 <= float(r["dice"]) <= 1 and r["reward"] == r["dice"] for r in rows)
    candidates = {r["candidate"] for r in rows if r["phase"] == "confirm"}
    assert candidates == {"final mean", "dice loss", CROSS_ENTROPY}
    exported = run_dir / "dice_bezier.yaml"
    assert "[search] export:" in done.stdout and "dice" in done.stdout
    retrain_dir = tmp_path / "retrain"
    done = launch("retrain", str(exported), data, *TINY_RETRAIN, f"--results={retrain_dir}")
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = retrain_dir.iterdir()
    metrics = read_csv(run_dir / "metrics.csv")
    assert [r["iteration"] for r in metrics] == ["4"] and 0 <= float(metrics[0]["dice"]) <= 1
    assert "dice" in json.loads((run_dir / "final.json").read_text())
    report = launch("report", str(run_dir))
    assert report.returncode == 0, report.stdout + report.stderr
    assert re.search(r"bf1_image \|\s+dice \|", report.stdout), report.stdout  # its column


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
