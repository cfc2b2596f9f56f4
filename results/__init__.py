"""Run folders in pandas (runs.py), the plots (plots.py) and `./launch.sh report` (report.py).
Notebooks live in results/notebooks/; run folders are written under results/search and
results/retrain (git-ignored)."""

from results.runs import RetrainRun, SearchRun, compare, load_retrain, load_search

__all__ = ["RetrainRun", "SearchRun", "compare", "load_retrain", "load_search"]
