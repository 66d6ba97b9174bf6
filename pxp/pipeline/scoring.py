"""The scoring stage: one criterion's per-component scores on the reference split, checkpointed."""

from __future__ import annotations

import torch

from pxp.attribution import ScoringContext, compute_scores
from pxp.pipeline.state import JobState
from pxp.spec import AttributionSpec
from pxp.stages import StageStore, stage_key


def _key(state: JobState, attribution: AttributionSpec) -> str:
    return stage_key(
        "scores",
        state.spec.model.model_dump(),
        state.spec.data.model_dump(),
        state.spec.splits.model_dump(),
        state.spec.prune.components,
        state.spec.prune.exclude,
        attribution.model_dump(),
    )


def remember(
    state: JobState, attribution: AttributionSpec, scores: dict[str, torch.Tensor], store: StageStore
) -> None:
    """Checkpoint ``scores`` as ``attribution``'s, computed elsewhere on the same reference split.

    The search's relevance pass of a composite is :func:`compute_scores` of that
    composite (:class:`pxp.search.evaluator.TrialEvaluator`), so the job stores it
    instead of running the pass again; a stage already checkpointed is kept.
    """
    key = _key(state, attribution)
    if set(scores) == {layer.name for layer in state.layers} and store.load_tensors(key) is None:
        store.save_tensors(key, scores)


def score(state: JobState, attribution: AttributionSpec, store: StageStore) -> dict[str, torch.Tensor]:
    """Scores of every prunable layer under ``attribution``; reused from ``store`` when cached."""
    key = _key(state, attribution)
    cached = store.load_tensors(key)
    if cached is not None and set(cached) == {layer.name for layer in state.layers}:
        return cached
    x, y = state.reference
    scores = compute_scores(ScoringContext(state.prepared, state.family, state.layers, x, y), attribution)
    store.save_tensors(key, scores)
    return scores
