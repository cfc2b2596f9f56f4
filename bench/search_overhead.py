"""What the search machinery costs on top of the proxy trainings.

Runs a real `./launch.sh search` on shapes (default: 2 steps x 8 samples of the default ~15 s
CPU proxy, one confirmation seed) and compares its wall time with the ideal, the time spent
inside the trials divided by the slots that run them at once (one per core on CPU):

    ratio = wall / (sum of trial seconds / slots)        target <= 1.10

"wall" is timed twice: the whole command (Python start, Ray start, the Tune run, shutdown) and
the searcher's own clock (from the first suggestion to the export). The per-trial overhead is
(wall - ideal) * slots / trials. Step barriers count as overhead: a step's last trials run while
other slots wait for the policy update.

Run: ./launch.sh bench search_overhead [--run RUN_DIR] [key=value ...]
  --run RUN_DIR  analyse a finished search instead of running one (command wall time unknown)
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segnets.engine import usable_cpus

REPO = Path(__file__).resolve().parent.parent
# one rung: every trial the same length, as measured before successive halving became default
DEFAULT = [
    "ppo.steps=2", "ppo.samples=8", "search.confirm_seeds=1", "search.rungs=1",
    "ray.dashboard=false",
]  # fmt: skip


def analyse(run_dir: Path, command_seconds: float | None, slots: int) -> None:
    with open(run_dir / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    inside = sum(float(t["seconds"]) for t in trials)
    ideal = inside / slots
    print(f"run: {run_dir}")
    print(f"trials: {len(trials)}, slots: {slots}, time inside trials: {inside:.1f} s")
    print(f"mean trial: {inside / len(trials):.1f} s, ideal wall (inside / slots): {ideal:.1f} s\n")
    print("| wall measured by | seconds | ratio to ideal | overhead per trial s | target |")
    print("|---|---:|---:|---:|---|")
    walls = {"searcher clock": summary["seconds"]}
    if command_seconds is not None:
        walls["whole command"] = command_seconds
    for name, wall in walls.items():
        ratio = wall / ideal
        per_trial = (wall - ideal) * slots / len(trials)
        met = "met" if ratio <= 1.10 else "missed"
        print(f"| {name} | {wall:.1f} | {ratio:.3f} | {per_trial:.2f} | <= 1.10: {met} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a finished search run folder to analyse")
    parser.add_argument("overrides", nargs="*", help="extra key=value for the search")
    args = parser.parse_args()
    slots = usable_cpus()  # what the search runs at once (search/run.py)
    if args.run:
        analyse(Path(args.run), None, slots)
        return
    with tempfile.TemporaryDirectory() as results:
        command = [str(REPO / "launch.sh"), "search", "miou", *DEFAULT, *args.overrides]
        print(" ".join(command[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run([*command, f"--results={results}"], check=True, stdout=sys.stderr)
        seconds = time.perf_counter() - start
        (run_dir,) = Path(results).iterdir()
        analyse(run_dir, seconds, slots)


if __name__ == "__main__":
    main()
