"""The curve stage: accuracy against pruning rate for one ranking on one split, checkpointed."""

from __future__ import annotations

from typing import Literal

from pxp.pipeline.budget import recovery
from pxp.pipeline.state import JobState
from pxp.pruning.curve import area_under_curve, safe_rate
from pxp.pruning.evaluate import evaluate_curve
from pxp.pruning.ranking import PruneOrder
from pxp.spec import CurveResult
from pxp.stages import StageStore, stage_key

Split = Literal["search", "test"]


def curve(
    state: JobState,
    label: str,
    order: PruneOrder,
    split: Split,
    store: StageStore,
    known: list[float] | None = None,
) -> CurveResult:
    """The pruning curve of ``order`` on ``split``; reused from ``store`` when cached.

    ``known``: the accuracies at ``prune.rates`` of exactly this order on this split
    with this job's recovery, already measured (the search's complete trial of the
    chosen configuration); they are used instead of evaluating the curve again.
    """
    prune = state.spec.prune
    key = stage_key(
        "curve",
        split,
        prune.rates,
        state.spec.model.model_dump(),
        state.spec.data.model_dump(),
        state.spec.splits.model_dump(),
        order.mask_key(),
        *([prune.recovery] if prune.recovery else []),
    )
    cached = store.load_json(key)
    if cached is not None:
        # The key names what is evaluated, not the label: a budget option equal to the job's own
        # options hits the job's curve and must come back under the label asked for.
        return CurveResult.model_validate(cached).model_copy(update={"label": label})
    x, y = state.test if split == "test" else state.search
    if known is not None:
        if len(known) != len(prune.rates):
            raise ValueError(f"{len(known)} known accuracies for {len(prune.rates)} rates")
        accuracies = list(known)
    else:
        # Every method evaluate_curve picks gives the same accuracies (with recovery: those of the
        # masked, recovered model at each rate), so the cache key does not name the method.
        with_recovery = recovery(state) if prune.recovery else None
        plain = with_recovery is None or with_recovery.changes_nothing  # e.g. BN re-estimation on a ViT
        planner = state.planner() if state.curve_method == "auto" and plain else None
        accuracies = evaluate_curve(
            state.prepared,
            order,
            prune.rates,
            x,
            y,
            method=state.curve_method,
            planner=planner,
            recovery=with_recovery,
        )
    safe = safe_rate(prune.rates, accuracies, prune.max_accuracy_drop)
    keep = order.keep_masks(safe)
    macs_removed = params_removed = None
    if state.family == "cnn":
        graph = state.component_graph()
        fractions = [graph.removed_fractions(order.keep_masks(rate)) for rate in prune.rates]
        macs_removed, params_removed = [f[0] for f in fractions], [f[1] for f in fractions]
    result = CurveResult(
        label=label,
        split=split,
        components=state.layers[0].kind,
        rates=list(prune.rates),
        accuracies=accuracies,
        unpruned_accuracy=accuracies[0],
        apr=area_under_curve(accuracies),
        safe_rate=safe,
        kept_per_layer={name: int(mask.sum()) for name, mask in keep.items()},
        macs_removed=macs_removed,
        params_removed=params_removed,
    )
    store.save_json(key, result.model_dump())
    return result
