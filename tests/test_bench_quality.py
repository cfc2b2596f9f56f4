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
    assert (
        "| miou | 51.00 +- 1.41 | tversky 61.00 +- 1.41 | 71.00 +- 1.41 | +10.00 (1.41) | "
        "beats it by more than the seed spread |" in out
    )  # the race's line for the target
    assert out.strip() == (tmp_path / "quality.md").read_text().strip()


def test_the_race_says_when_the_searched_loss_is_below_the_best_hand_made_one(tmp_path):
    for seed, (ce, lovasz, searched) in enumerate([(0.50, 0.80, 0.70), (0.52, 0.82, 0.72)]):
        fake_final(tmp_path, "ce", seed, ce)
        fake_final(tmp_path, "lovasz", seed, lovasz)
        fake_final(tmp_path, "searched", seed, searched)
    text = quality.race({"miou": quality.collect("miou", 2, tmp_path)})
    assert text.splitlines()[-1] == (
        "| miou | 51.00 +- 1.41 | lovasz 81.00 +- 1.41 | 71.00 +- 1.41 | -10.00 (1.41) | "
        "below it by more than the spread |"
    )


def fake_counts_run(work, loss, seed, counts, final_extra=None):
    """A finished run of `loss` whose classes.csv holds the last evaluation's pixel counts."""
    folder = quality.seed_folder(loss, "dice", seed, work) / "run"
    folder.mkdir(parents=True)
    final = {m: 0.5 for m in quality.METRICS} | {"iteration": 20} | (final_extra or {})
    (folder / "final.json").write_text(json.dumps(final))
    rows = ["iteration,class,name,tp,fp,fn,tn"]
    rows += [f"10,{c},c{c},0,0,0,0" for c in range(len(counts))]  # an earlier evaluation
    rows += [f"20,{c},c{c}," + ",".join(map(str, row)) for c, row in enumerate(counts)]
    (folder / "classes.csv").write_text("\n".join(rows) + "\n")


def test_a_spec_target_comes_from_the_baselines_pixel_counts_and_the_exports_column(tmp_path):
    # dice per class 2tp / (2tp + fp + fn): 16/18 and 6/8, mean 81.94; the other run 4/6, 1
    fake_counts_run(tmp_path, "ce", 0, [[8, 2, 0, 10], [3, 0, 2, 15]])
    fake_counts_run(tmp_path, "ce", 1, [[2, 2, 0, 16], [5, 0, 0, 15]])
    fake_counts_run(tmp_path, "searched", 0, [[1, 1, 1, 1]] * 2, {"dice": 0.9})
    fake_counts_run(tmp_path, "searched", 1, [[1, 1, 1, 1]] * 2, {"dice": 0.9})
    results = quality.collect("dice", 2, tmp_path)
    assert [f["dice"] for f in results["ce"]] == pytest.approx([(16 / 18 + 6 / 8) / 2, 5 / 6])
    assert [f["dice"] for f in results["searched"]] == [0.9, 0.9]  # the retrain's own value
    text = quality.table("dice", results, False)
    assert "| loss | seeds | miou | fwiou | macc | gacc | biou | bf1 | dice* |" in text
    assert "searched - CE on dice: +7.36" in text  # 90 - (81.94 + 83.33) / 2


def test_a_spec_without_preset_skips_it_and_a_per_image_spec_is_refused(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(quality, "retrain", lambda file, folder, *_: calls.append(folder))
    monkeypatch.setattr(quality, "search", lambda metric, work: work / f"{metric}_bezier.yaml")
    quality.run_all(["dice"], ["ce", "preset", "searched"], 1, 1, tmp_path)
    assert sorted(f.parent.name for f in calls) == ["retrain-ce", "retrain-dice-searched"]
    command = [sys.executable, str(REPO / "bench" / "quality.py"), "--table-only"]
    command += ["--metrics", "dice_image", f"--work={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert "--metrics dice_image is per image or on a band" in done.stderr
