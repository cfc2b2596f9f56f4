"""`./launch.sh bench fidelity`: which losses it picks, its rank correlations, and a tiny run on a
search folder written by the real searcher (toy rewards) with real proxy and retrain runs."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from test_searcher import drive, tiny_config, toy_result, tune_searcher

from experiments.config import to_yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import fidelity  # noqa: E402


def test_losses_are_spread_over_the_reward_range_once_each():
    def row(reward, raw, status="ok", phase="search", iterations=300):
        return {
            "phase": phase, "status": status, "reward": str(reward), "iterations": str(iterations),
            "step": "1", "sample": "0", "raw_0": str(raw),
        }  # fmt: skip

    rows = [row(r / 10, r) for r in range(1, 11)]  # rewards 0.1 ... 1.0
    rows += [row(0.0, 11, status="failed"), row(2.0, 12, phase="confirm")]
    rows += [row(0.55, 5), row(0.95, 13, iterations=150)]  # a repeated raw, a lower rung
    picked = fidelity.pick_losses(rows, 4, full_iterations=300)
    assert [float(r["reward"]) for r in picked] == [0.1, 0.4, 0.7, 1.0]  # ranks 0, 3, 6, 9
    assert len(fidelity.pick_losses(rows, 20, full_iterations=300)) == 10


def test_rank_correlations_match_hand_computed_values():
    # pairs: 5 concordant, 1 discordant -> tau = 4 / 6; rank differences 0, 1, 1, 0 -> rho 0.8
    tau, rho = fidelity.correlations([0.1, 0.2, 0.3, 0.4], [0.1, 0.3, 0.2, 0.4])
    assert tau == pytest.approx(2 / 3) and rho == pytest.approx(1 - 6 * 2 / (4 * 15))


def test_bench_fidelity_retrains_the_picked_losses_and_ce(tmp_path):
    tiny = {
        "proxy.fit.iterations": "8", "proxy.fit.batch_size": "4", "proxy.crop_size": "24",
        "data.params": "{size: 32, train: 24, holdout: 12, val: 8, test: 4}",
        "data.root": str(tmp_path / "data"),
    }  # fmt: skip
    cfg = tiny_config(tmp_path, **tiny)
    run_dir = tmp_path / "search"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    drive(tune_searcher(cfg, run_dir), results=lambda c: toy_result([c["raw_0"]]))
    retrain = ["retrain.fit.iterations=6", "retrain.fit.batch_size=4", "retrain.crop_size=24"]
    retrain += ["retrain.model_args={width: 8}", "retrain.fit.eval_every=0"]
    command = [str(REPO / "launch.sh"), "bench", "fidelity", str(run_dir), "--losses", "3"]
    jobs = ["--jobs", "2"]  # two retrains at once, each logging into its folder
    jobs += ["--fractions", "0.5,1"]  # and each loss at two confirmation fidelities
    done = subprocess.run([*command, *jobs, *retrain], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(run_dir / "fidelity" / "fidelity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[-1]["loss"] == "cross-entropy"
    for row in rows:
        assert "[retrain] done" in (run_dir / "fidelity" / row["loss"] / "retrain.log").read_text()
    assert "Kendall tau" in done.stdout and (run_dir / "fidelity" / "fidelity.png").is_file()
    with open(run_dir / "trials.csv") as f:
        searched = [float(r["reward"]) for r in csv.DictReader(f) if r["phase"] == "search"]
    proxy = sorted(float(r["proxy"]) for r in rows[:-1])  # the lowest and the highest reward
    assert (proxy[0], proxy[-1]) == (min(searched), max(searched))
    again = [*command, "--fractions", "0.5,1", "--table-only"]
    again = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ ./launch.sh" not in again.stdout  # nothing ran again
    assert "at confirmation fidelity" not in again.stdout
    assert again.stdout.split("\n\n")[-1] == done.stdout.split("\n\n")[-1]
    # the fidelity table: each loss at both confirmation fidelities, and the retrain agrees
    # with itself
    for fraction in ("0.5", "1"):
        assert f"| confirm {fraction} |" in done.stdout
        assert all(0 <= float(row[f"confirm {fraction}"]) <= 1 for row in rows)
    assert done.stdout.rstrip().endswith("| 1.00 | 0.00 |")  # the retrained row
    # costs from one timing of both networks: the whole retrain schedule at fidelity 1 costs
    # what the retrain costs, half of it less
    costs = {
        line.split(" | ")[0].strip("| "): float(line.split(" | ")[1].replace(",", ""))
        for line in done.stdout.splitlines()
        if line.startswith(("| confirm", "| retrained"))
    }
    assert costs["confirm 1"] == costs["retrained"] > costs["confirm 0.5"] > 0
    assert (run_dir / "fidelity" / "iteration-cost.json").is_file()


def test_a_fidelitys_tau_and_top1_regret_are_hand_computed():
    rows = [  # retrained 0.80 0.70 0.75: the best loss is "a"
        {"loss": "a", "retrained": 0.80, "proxy": 0.30, "confirm 0.2": 0.50},
        {"loss": "b", "retrained": 0.70, "proxy": 0.40, "confirm 0.2": 0.40},
        {"loss": "c", "retrained": 0.75, "proxy": 0.35, "confirm 0.2": 0.45},
    ]
    table = fidelity.fidelity_rows(rows, {"proxy": 300, "confirm 0.2": 900})
    proxy, confirm = table
    # the proxy ranks them exactly backwards (tau -1) and favours b, 10 points below a
    assert proxy["tau"] == pytest.approx(-1) and proxy["regret"] == pytest.approx(10)
    assert confirm["tau"] == pytest.approx(1) and confirm["regret"] == 0
    assert (proxy["cost"], confirm["cost"]) == (300, 900)


def test_bench_fidelity_rejects_a_folder_that_is_not_a_finished_search(tmp_path):
    command = [str(REPO / "launch.sh"), "bench", "fidelity", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "is not a finished search run folder" in done.stderr
