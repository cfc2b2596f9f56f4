"""Writing run folders: new folders that never overwrite an old one, and files written
atomically (temp file + rename), so a crash never leaves a half-written file behind. What
`runs.py` reads, this module writes. Standard library only: the search, its trials, retrain
processes and the shapes cache all import it, and none of them should pay for pandas.
"""

import contextlib
import csv
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path


def new_run_folder(results: str | Path, name: str) -> Path:
    """results/<name>-<timestamp>, with a -2, -3 ... suffix: a run folder is never overwritten."""
    base = Path(results) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temp path beside `path` to write to; renamed onto `path` when the block ends
    without an error, removed otherwise. The temp name keeps the suffix (np.savez, savefig and
    torch.save look at it) and carries the pid (two processes never share a temp file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, value: dict) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_csv(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    """A header and one line per row; keys outside `columns` are left out, missing ones empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a CSV as dicts of strings; [] when the file does not exist yet."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def comparison_markdown(comparison: dict) -> str:
    """comparison.json -> the table of SPEC A§6.1: a row per loss, the metrics in %, the
    searched loss's target metric marked with *."""
    target, metrics = comparison["target"], comparison["metrics"]
    header = [f"{m}*" if m == target else m for m in metrics]
    lines = ["| loss | " + " | ".join(header) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in comparison["losses"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * values[m]:.2f}" for m in metrics) + " |")
    note = f"\n* the searched loss's target metric ({target})" if target else ""
    return "\n".join(lines) + note + "\n"
