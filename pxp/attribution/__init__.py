"""Attribution criteria that score prunable components."""

from pxp.attribution.criteria import CRITERIA, ScoringContext, compute_scores

__all__ = ["CRITERIA", "ScoringContext", "compute_scores"]
