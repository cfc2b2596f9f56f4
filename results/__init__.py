"""Run folders: written by files.py (standard library only, used by every stage), read into
pandas by runs.py, drawn by plots.py, summarised by `./launch.sh report` (report.py). Notebooks
live in results/notebooks/; run folders are written under results/search and results/retrain
(git-ignored).

The readers are imported on first use, so `import results.files` in a search trial or a retrain
process does not import pandas.
"""

__all__ = ["RetrainRun", "SearchRun", "compare", "load_retrain", "load_search"]


def __getattr__(name: str):
    if name in __all__:
        from results import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'results' has no attribute '{name}'")
