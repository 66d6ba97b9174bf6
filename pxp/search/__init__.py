"""Optuna search over LRP attribution hyperparameters (ARCHITECTURE.md §2 "Search")."""

from pxp.search.artifacts import search_result, write_search_artifacts
from pxp.search.runner import ProgressCallback, SearchOutcome, run_search
from pxp.search.space import SearchSpace, TrialConfig
from pxp.search.study import default_storage_url, redact_url

__all__ = [
    "ProgressCallback",
    "SearchOutcome",
    "SearchSpace",
    "TrialConfig",
    "default_storage_url",
    "redact_url",
    "run_search",
    "search_result",
    "write_search_artifacts",
]
