"""bench/quality.py: any registered loss in the race, a baseline's retrains shared by every
target metric, the table's verdict against the best hand-made loss, and --table-only."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import quality  # noqa: E402  (bench/quality.py)

from retrain.config import resolve  # noqa: E402
from retrain.train import make_loss  # noqa: E402


def test_baselines_share_their_seeds_across_metrics_and_surrogates_do_not(tmp_path):
    assert {"ce", "tversky", "boundary", "wce"} <= set(quality.BASELINES)
    assert "surrogate" not in quality.BASELINES
    shared = {quality.seed_folder("tversky", m, 1, tmp_path) for m in quality.METRICS}
    assert shared == {tmp_path / "retrain-tversky" / "seed1"}
    assert quality.seed_folder("ce", "bf1", 0, tmp_path) == tmp_path / "retrain-ce" / "seed0"
    preset = quality.seed_folder("preset", "miou", 0, tmp_path)
    assert preset == tmp_path / "retrain-miou-preset" / "seed0"


def test_run_all_retrains_each_baseline_once_for_every_metric(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(quality, "retrain", lambda file, folder, *_: calls.append(folder))
    quality.run_all(["miou", "bf1"], ["ce", "tversky", "preset"], 2, 1, tmp_path)
    names = sorted(f"{folder.parent.name}/{folder.name}" for folder in calls)
    assert names == sorted(
        f"{run}/seed{s}"
        for run in ("retrain-ce", "retrain-tversky", "retrain-miou-preset", "retrain-bf1-preset")
        for s in (0, 1)
    )


@pytest.mark.parametrize("loss", ["wce", "boundary", "ce_dice"])
def test_a_baseline_file_is_a_retrain_loss_file(loss, tmp_path):
    path = quality.loss_file(loss, "miou", tmp_path)
    cfg = resolve(path, {"data": "shapes"}, str(REPO / "data"))
    assert cfg.loss == {"name": loss}
    make_loss(cfg, 7)  # wce: median-frequency weights from the shapes training labels


def fake_final(work, loss, seed, miou):
    folder = quality.seed_folder(loss, "miou", seed, work) / "run"
    folder.mkdir(parents=True)
    final = {m: 0.5 for m in quality.METRICS} | {"miou": miou}
    (folder / "final.json").write_text(json.dumps(final))


def test_table_only_shows_every_finished_loss_and_the_best_hand_made_one(tmp_path):
    for seed, (ce, dice, searched) in enumerate([(0.50, 0.60, 0.70), (0.52, 0.62, 0.72)]):
        fake_final(tmp_path, "ce", seed, ce)
        fake_final(tmp_path, "tversky", seed, dice)
        fake_final(tmp_path, "searched", seed, searched)
    command = [sys.executable, str(REPO / "bench" / "quality.py"), "--table-only"]
    command += ["--metrics", "miou", "--seeds", "2", f"--work={tmp_path}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert "| tversky | 2 | 61.00 +- 1.41" in out
    assert "searched - CE on miou: +20.00 (spread 1.41): beats CE" in out
    assert "best hand-made on miou: tversky 61.00; searched - tversky: +10.00" in out
    assert "beats it by more than the seed spread" in out
