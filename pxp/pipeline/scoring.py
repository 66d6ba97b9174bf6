"""The scoring stage: one criterion's per-component scores on the reference split, checkpointed."""

from __future__ import annotations

import torch

from pxp.attribution import ScoringContext, compute_scores
from pxp.pipeline.state import JobState
from pxp.spec import AttributionSpec
from pxp.stages import StageStore, stage_key


def score(state: JobState, attribution: AttributionSpec, store: StageStore) -> dict[str, torch.Tensor]:
    """Scores of every prunable layer under ``attribution``; reused from ``store`` when cached."""
    key = stage_key(
        "scores",
        state.spec.model.model_dump(),
        state.spec.data.model_dump(),
        state.spec.splits.model_dump(),
        state.spec.prune.components,
        state.spec.prune.exclude,
        attribution.model_dump(),
    )
    cached = store.load_tensors(key)
    if cached is not None and set(cached) == {layer.name for layer in state.layers}:
        return cached
    x, y = state.reference
    scores = compute_scores(ScoringContext(state.prepared, state.family, state.layers, x, y), attribution)
    store.save_tensors(key, scores)
    return scores
