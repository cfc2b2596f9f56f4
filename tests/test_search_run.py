"""`./launch.sh search` end to end on a tiny shapes search: the run folder, injected faults,
resume after Ctrl-C, a two-node Ray cluster, and the one-line errors for bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segnets.engine import usable_cpus
from surrogates import SurrogateLoss

REPO = Path(__file__).resolve().parent.parent
# 2 steps x 3 samples of 8-iteration proxies on 32 px shapes, 1 confirmation seed: ~1 min
TINY = [
    "ppo.steps=2",
    "ppo.samples=3",
    "proxy.fit.iterations=8",
    "proxy.fit.batch_size=4",
    "proxy.crop_size=24",
    "data.params={size: 32, train: 48, holdout: 12, val: 4, test: 4}",
    "search.tolerance=1",
    "search.confirm_top_k=1",
    "search.confirm_seeds=1",
    "search.faults=2:1=raise,2:2=nan,1:2=kill",
    "search.confirm_baselines=false",  # 8-iteration proxies: CE would win (tests/test_searcher)
    "search.confirm_identity=true",
    "search.rungs=1",  # successive halving: its own test below
]
TOTAL_TRIALS = 2 * 3 + 3  # steps x samples + (final mean, top-1, identity) x 1 seed
NO_FAULTS = [word for word in TINY if not word.startswith("search.faults")]


def search(args, results, data_root, **popen):
    command = [str(REPO / "launch.sh"), "search", *args, f"--results={results}"]
    if args and args[0] != "--resume":
        command.append(f"data.root={data_root}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, text=True, capture_output=True, timeout=600)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def the_run(results: Path) -> Path:
    (run_dir,) = results.iterdir()
    return run_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted tiny search (with the dashboard), shared by the tests below."""
    root = tmp_path_factory.mktemp("search")
    done = search(["miou", *TINY], root / "results", root / "data")
    assert done.returncode == 0, done.stdout + done.stderr
    return done, the_run(root / "results"), root


def test_search_leaves_a_complete_run_folder(finished):
    done, run_dir, _ = finished
    for name in ("config.yaml", "trials.csv", "policy.csv", "miou_bezier.yaml", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "tune").is_dir()
    assert f"no GPU: trials run on CPU, one thread each, {usable_cpus()} at a time" in done.stdout
    assert "Ray dashboard: http://127.0.0.1:8265" in done.stdout
    assert "retrain: ./launch.sh retrain" in done.stdout and "vs identity " in done.stdout

    trials = read_csv(run_dir / "trials.csv")
    assert len(trials) == TOTAL_TRIALS and len({t["trial_id"] for t in trials}) == TOTAL_TRIALS
    assert [row["step"] for row in read_csv(run_dir / "policy.csv")] == ["1", "2"]
    summary = json.loads((run_dir / "summary.json").read_text())
    loss = SurrogateLoss.from_file(run_dir / "miou_bezier.yaml", num_classes=7)
    assert loss.metric == "miou" and loss.theta == pytest.approx(summary["theta"], abs=1e-7)
    assert loss.tolerance == 1


def test_faulty_trials_are_recorded_and_the_search_goes_on(finished):
    _, run_dir, _ = finished
    rows = {(r["step"], r["sample"]): r for r in read_csv(run_dir / "trials.csv")}
    assert rows[("2", "1")]["status"] == "failed"
    assert "injected fault" in rows[("2", "1")]["reason"]
    assert rows[("2", "2")]["status"] == "failed"
    assert "non-finite loss" in rows[("2", "2")]["reason"]
    step2_ok = [float(r["reward"]) for k, r in rows.items() if k[0] == "2" and r["status"] == "ok"]
    assert float(rows[("2", "1")]["reward_used"]) == min(step2_ok)
    assert read_csv(run_dir / "policy.csv")[1]["failed"] == "2"
    assert sum(r["status"] == "ok" for r in rows.values()) == TOTAL_TRIALS - 2
    # the worker of trial (1, 2) was killed (SIGKILL): Tune ran it again, and it counts as ok
    killed = rows[("1", "2")]
    assert killed["status"] == "ok", killed["reason"]
    (state_file,) = (run_dir / "tune").glob("experiment_state-*.json")
    failures = {  # Tune's own record: (trial, run metadata) per trial
        json.loads(trial)["trial_id"]: json.loads(metadata)["num_failures"]
        for trial, metadata in json.loads(state_file.read_text())["trial_data"]
    }
    assert failures[killed["trial_id"]] == 1 and sum(failures.values()) == 1


@pytest.mark.parametrize("controller", ["ppo", "cmaes"])
def test_resume_after_ctrl_c_ends_with_the_same_policy(controller, finished, tmp_path):
    data_root = finished[2] / "data"
    args = ["miou", *TINY, f"search.controller={controller}", "ray.dashboard=false"]
    if controller == "ppo":
        reference = finished[1]
    else:  # an uninterrupted run of the same search
        done = search(args, tmp_path / "reference", data_root)
        assert done.returncode == 0, done.stdout + done.stderr
        reference = the_run(tmp_path / "reference")
    run_dir = interrupt_and_resume(args, tmp_path, data_root, "policy.csv")
    assert read_csv(run_dir / "policy.csv") == read_csv(reference / "policy.csv")
    ours = json.loads((run_dir / "summary.json").read_text())
    theirs = json.loads((reference / "summary.json").read_text())
    assert ours["theta"] == theirs["theta"] and ours["reward"] == theirs["reward"]
    assert len(read_csv(run_dir / "trials.csv")) == TOTAL_TRIALS


def interrupt_and_resume(args, tmp_path, data_root, written: str) -> Path:
    """Ctrl-C a search as soon as its run folder has a path matching `written`, then
    --resume it; the resumed run's folder."""
    folder = tmp_path / "interrupted"
    folder.mkdir()
    child = search(args, folder, data_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    found = []
    while time.time() < deadline and child.poll() is None and not found:
        runs = list(folder.iterdir())
        found = list(runs[0].glob(written)) if runs else []
        time.sleep(0.2)
    assert found, f"{written} never appeared"
    child.send_signal(signal.SIGINT)
    output, _ = child.communicate(timeout=300)
    assert child.returncode == 130, output
    run_dir = the_run(folder)
    assert f"--resume {run_dir}" in output and not (run_dir / "summary.json").exists()
    resumed = search(["--resume", str(run_dir)], folder, data_root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return run_dir


def test_successive_halving_resumes_rungs_from_checkpoints_and_after_ctrl_c(finished, tmp_path):
    """Two rungs: every sample trains 4 of 8 iterations, the best 2 and the mean continue from
    the training states the first rung left in its trials' folders, to 8. Ctrl-C once the first
    rung's states exist: the resumed search ends exactly as an uninterrupted one, and spent
    states are removed."""
    data_root = finished[2] / "data"
    halving = ["ppo.samples=4", "search.rungs=2", "search.reduction=2", "ray.dashboard=false"]
    args = ["miou", *NO_FAULTS, *halving]
    done = search(args, tmp_path / "reference", data_root)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = the_run(tmp_path / "reference")
    assert "rung 2/2" in done.stdout
    trials = read_csv(reference / "trials.csv")
    continued = [t for t in trials if t["rung"] == "1" and t["phase"] == "search"]
    assert len(continued) >= 2 * 2 and all(t["trained"] == "4" for t in continued)
    assert all(t["status"] == "ok" for t in trials)
    for t in continued:  # each started from the state its first-rung trial saved
        params = json.loads(
            (reference / "tune" / f"trial_{t['trial_id']}" / "params.json").read_text()
        )
        first = next(
            f
            for f in trials
            if (f["step"], f["sample"], f["rung"]) == (t["step"], t["sample"], "0")
        )
        assert params["resume"].endswith(f"trial_{first['trial_id']}/rung_state.pth")
    assert not list((reference / "tune").glob("trial_*/rung_state.*"))  # spent: removed
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["iterations"] == sum(int(t["trained"]) for t in trials)

    run_dir = interrupt_and_resume(args, tmp_path, data_root, "tune/trial_*/rung_state.pth")
    assert read_csv(run_dir / "policy.csv") == read_csv(reference / "policy.csv")
    ours = json.loads((run_dir / "summary.json").read_text())
    assert ours["reward"] == summary["reward"] and ours["raw"] == summary["raw"]


def test_trials_spread_over_a_two_node_cluster(finished, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        done = search(
            ["miou", *NO_FAULTS, "proxy.fit.iterations=40", f"--address={cluster.address}"],
            tmp_path,
            finished[2] / "data",
        )
    finally:
        cluster.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    nodes = {row["node"] for row in read_csv(the_run(tmp_path) / "trials.csv")}
    assert len(nodes) == 2, nodes


@pytest.mark.parametrize("controller", ["random", "cmaes", "tpe"])
def test_other_controllers_run_end_to_end(controller, finished, tmp_path):
    # NUM_GPUS=3 on a machine without GPUs: 3 trials at once, at most one per usable core
    args = ["miou", "3", *NO_FAULTS, f"search.controller={controller}", "ray.dashboard=false"]
    done = search(args, tmp_path, finished[2] / "data")
    assert done.returncode == 0, done.stdout + done.stderr
    slots = min(3, usable_cpus())
    assert f"trials run on CPU, one thread each, {slots} at a time" in done.stdout
    assert f"cpu_slots: {slots}" in (the_run(tmp_path) / "config.yaml").read_text()  # for --resume
    assert ("3 CPU slots asked" in done.stdout) == (slots < 3)
    run_dir = the_run(tmp_path)
    rows = read_csv(run_dir / "trials.csv")
    assert sum(r["phase"] == "search" for r in rows) == 2 * 3
    # final mean, top-1 and identity, each once: random's mean is its best sample, which may be
    # sample 0, the identity curve, and then two of the three are one candidate
    confirm = [r for r in rows if r["phase"] == "confirm"]
    confirmed = [tuple(v for k, v in r.items() if k.startswith("raw_")) for r in confirm]
    assert 2 <= len(confirmed) <= 3 and len(set(confirmed)) == len(confirmed)
    assert SurrogateLoss.from_file(run_dir / "miou_bezier.yaml", num_classes=7).metric == "miou"


@pytest.mark.parametrize(
    "args,message",
    [
        (["mIoU"], "unknown metric 'mIoU'; valid: .* did you mean 'miou'"),
        (["miou", "0"], "NUM_GPUS must be a positive integer, got '0'"),
        (["miou", "two"], "NUM_GPUS must be a positive integer, got 'two'"),
        (["miou", "ppo.stepz=3"], "unknown config key 'ppo.stepz'.*did you mean 'ppo.steps'"),
        (["miou", "ppo.steps=x"], "bad value for ppo.steps: 'x'"),
        (["miou", "search.controller=cma"], "unknown controller 'cma'.*did you mean 'cmaes'"),
        (["miou", "data=voc"], "VOC"),
        (["miou", "proxy.model_args.widht=8"], "widht"),
        (["miou", "ppo.lr=nan"], "ppo.lr must be a finite number, got nan"),
        (["--resume", "/tmp"], "is not a search run folder"),
        ([], "missing METRIC"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    import re

    done = search(args, tmp_path / "results", tmp_path / "data")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "results").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
