"""Structural removal: a physically smaller model equal to the masked one (ARCHITECTURE.md §2)."""

from __future__ import annotations

from pxp.pruning.removal.core import (
    ATOL,
    RTOL,
    RemovalResult,
    count_params,
    removal_planner,
    remove_pruned,
    verify_equivalent,
)
from pxp.pruning.removal.plan import ModuleCut, RemovalPlan, apply_cuts, cut_tensors

__all__ = [
    "ATOL",
    "RTOL",
    "ModuleCut",
    "RemovalPlan",
    "RemovalResult",
    "apply_cuts",
    "count_params",
    "cut_tensors",
    "removal_planner",
    "remove_pruned",
    "verify_equivalent",
]
