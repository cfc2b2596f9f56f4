"""bench/gpu.py end to end on a CPU (--cpu-dry-run): every part of the GPU check runs at toy
sizes (real searches, real retrains, the packed processes, the gloo DDP comparison) and its
table has a row for each; on a GPU machine the same code measures (docs/performance.md)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "proxy alone: iterations/s, images/s",
    "proxy alone: data wait",
    "proxy alone: peak memory",
    "2 packed: images/s together",
    "2 packed: peak memory",
    "search, halving on, step 1: start-up; trials' mean setup, train, state, eval",
    "search, halving on, step 1: overhead vs training",
    "search, halving on: processes on the machine",
    "search, halving off, step 1: start-up",
    "search, halving off, step 1: overhead vs training",
    "search, halving off: processes on the machine",
    "retrain killed after iteration",  # its first checkpoint, or a later one
    "distance maps, torch on the device vs scipy on the host: largest difference",
    "hausdorff step vs CE's",
    "./launch.sh retrain ... 2: loss group of 8 over 2 processes",
    "first step on 2 gloo processes vs 1: S, gradients (relative)",
)


def test_the_gpu_bench_dry_run_runs_every_part_and_prints_its_rows():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [ROOT / "launch.sh", "bench", "gpu", "--cpu-dry-run"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| measurement | value | target | met |"
    measurements = [line.split(" | ")[0].removeprefix("| ") for line in table[1:]]
    for row in ROWS:
        assert any(m.startswith(row) for m in measurements), (row, measurements)
    assert not any("FAILED" in line for line in table), table
    # the resumed retrain ends exactly where the uninterrupted one does on a CPU, and the two
    # processes' first step matches the one process's (BatchNorm frozen on a CPU)
    resumed = next(line for line in table if "resumed" in line)
    assert "| 0 (two uninterrupted runs: 0) |" in resumed, resumed
    assert next(line for line in table if "gloo" in line).endswith("| yes |")
    assert next(line for line in table if "distance maps" in line).endswith("| yes |")
