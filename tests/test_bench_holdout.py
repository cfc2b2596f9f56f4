"""`./launch.sh bench holdout`: the holdout-fraction measurement of docs/data.md, run tiny."""

import os
import re
import subprocess
from pathlib import Path

LAUNCH = Path(__file__).resolve().parent.parent / "launch.sh"


def test_bench_holdout_runs_real_trials_and_prints_a_row_per_fraction():
    command = [LAUNCH, "bench", "holdout", "--images", "30", "--seeds", "2", "--iterations", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([*command, "--jobs", "1"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^\| (0\.\d) \| (\d+) \| (\d+) \(-[\d.]+%\) \| (\d+) \|", done.stdout, re.M)
    # 30 images: 0.1 holds out 0, 10, 20; 0.3 holds out 9 of them; no trial failed
    assert rows == [("0.1", "3", "27", "0"), ("0.3", "9", "21", "0")], done.stdout
