"""The house rules that keep the stages apart (DESIGN.md, Layout): dependencies point one way,
Ray lives in the search's Ray adapter alone, and a retrain process or a proxy trial imports
neither Ray nor the plotting stack."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("surrogates", "data", "segnets", "experiments", "search", "retrain", "results")


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def packages_imported(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported(path)}


def test_a_retrain_process_and_a_proxy_trial_import_no_ray_pandas_or_matplotlib():
    code = (
        "import sys\n"
        "import retrain.train, retrain.run, search.trial, search.steps\n"
        "import experiments.config, results.files\n"
        "print(sorted(m for m in ('ray', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ray_is_imported_by_the_search_adapter_alone():
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    users = sorted(str(p.relative_to(REPO)) for p in files if "ray" in packages_imported(p))
    assert users == ["search/searcher.py"]


@pytest.mark.parametrize(
    "package,forbidden",
    [
        ("surrogates", {"data", "segnets", "experiments", "search", "retrain", "results"}),
        ("data", {"segnets", "experiments", "search", "retrain"}),
        ("segnets", {"experiments", "search", "retrain", "results"}),
        ("experiments", {"search", "retrain"}),
        ("retrain", {"search"}),
        ("search", {"retrain"}),
    ],
)
def test_dependencies_point_one_way(package, forbidden):
    for path in (REPO / package).rglob("*.py"):
        assert not packages_imported(path) & forbidden, path


def test_the_trial_module_does_not_import_the_searcher():
    assert not {"search.searcher", "search.run"} & imported(REPO / "search" / "trial.py")


def test_results_writes_with_the_standard_library_only():
    assert packages_imported(REPO / "results" / "files.py") <= set(sys.stdlib_module_names)
