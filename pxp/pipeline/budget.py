"""What the user receives beyond the paper's curve: recovery inside evaluation and a refined rate.

``recovery`` (one :class:`~pxp.pruning.recovery.Recovery` per job, built lazily
from the reference split) is what the curve stage evaluates when
``prune.recovery`` is set, and what the export stage removes from.
``refined_rate`` bisects between grid rates on the search split.
"""

from __future__ import annotations

import torch

from pxp.pipeline.state import JobState
from pxp.pruning.curve import accuracy
from pxp.pruning.ranking import PruneOrder
from pxp.pruning.recovery import Recovery
from pxp.pruning.refine import Refinement, refine_safe_rate
from pxp.spec import CurveResult
from pxp.stages import StageStore, stage_key


def recovery(state: JobState) -> Recovery:
    """The job's recovery (cached on the state object); disabled when ``prune.recovery`` is empty."""
    cached = getattr(state, "_pxp_recovery", None)
    if isinstance(cached, Recovery):
        return cached
    built = Recovery(
        state.prepared, state.family, state.layers, state.reference[0], state.spec.prune.recovery
    )
    object.__setattr__(state, "_pxp_recovery", built)
    return built


def evaluate(state: JobState, order: PruneOrder, rate: float, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy at ``rate`` of the masked model, recovered when the job asks for recovery."""
    with recovery(state).applied(order.keep_masks(rate)) as model:
        return accuracy(model, x, y)


def refined_rate(state: JobState, order: PruneOrder, grid: CurveResult, store: StageStore) -> Refinement:
    """Bisect on the search split between ``grid``'s safe rate and the next grid rate (checkpointed)."""
    prune = state.spec.prune
    key = stage_key(
        "refine",
        prune.refine_steps,
        prune.max_accuracy_drop,
        prune.recovery,
        grid.rates,
        grid.accuracies,
        state.spec.model.model_dump(),
        state.spec.data.model_dump(),
        state.spec.splits.model_dump(),
        order.order,
    )
    cached = store.load_json(key)
    if cached is not None:
        return Refinement(
            grid_safe_rate=cached["grid_safe_rate"],
            refined_rate=cached["refined_rate"],
            evaluations=[(float(r), float(a)) for r, a in cached["evaluations"]],
        )
    x, y = state.search
    result = refine_safe_rate(
        order,
        grid.rates,
        grid.accuracies,
        grid.safe_rate,
        prune.max_accuracy_drop,
        lambda rate: evaluate(state, order, rate, x, y),
        max_steps=prune.refine_steps,
    )
    store.save_json(key, result.as_dict())
    return result
