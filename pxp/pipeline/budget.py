"""What the user receives beyond the paper's curve: recovery inside evaluation and a refined rate.

``recovery`` (one :class:`~pxp.pruning.recovery.Recovery` per job, built lazily
from the reference split) is what the curve stage evaluates when
``prune.recovery`` is set, and what the export stage removes from.
``refined_rate`` bisects between grid rates on the search split. ``choose_budget``
is the ``budget`` objective: the ranking, recovery and rate removing the most MACs
within ``max_accuracy_drop`` on the search split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from pxp.pipeline.state import JobState
from pxp.pruning.curve import accuracy
from pxp.pruning.latency import measure_latency
from pxp.pruning.ranking import PruneOrder
from pxp.pruning.recovery import Recovery
from pxp.pruning.refine import Refinement, refine_safe_rate
from pxp.pruning.removal import RemovalResult, remove_pruned
from pxp.spec import CurveResult
from pxp.stages import StageStore, stage_key

#: Cost exponents the ``budget`` objective tries.
BUDGET_BETAS: tuple[float, ...] = (0.0, 0.5, 1.0)


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


def removed(state: JobState, keep: dict[str, torch.Tensor], verify: torch.Tensor) -> RemovalResult:
    """The model ``keep`` leaves, physically removed: from the recovered copy when the job recovers.

    Removal is verified on ``verify`` against the (recovered) masked model; the
    export stage and the latency budget both hand back exactly this model.
    """
    recovered = recovery(state)
    source = recovered.recovered_model(keep) if recovered.enabled else state.prepared
    return remove_pruned(source, state.family, state.layers, keep, verify)


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
        order.mask_key(),
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


def _options(state: JobState) -> list[dict[str, Any]]:
    """The budget objective's search space: β × recovery (× coupling for CNNs).

    On a ViT, β and coupling change nothing (every head / neuron of a kind costs the
    same, no component is shared by two producers) and there is no BatchNorm to
    re-estimate, so the options are recovery off and least squares (out_proj / fc2 refits).
    """
    if state.family != "cnn":
        return [
            {"cost_exponent": 0.0, "recovery": rec, "coupled": False}
            for rec in ([], ["least_squares", "bn_reestimate"])
        ]
    recoveries: list[list[str]] = [[], ["bn_reestimate"], ["least_squares", "bn_reestimate"]]
    return [
        {"cost_exponent": beta, "recovery": rec, "coupled": True}
        for rec in recoveries
        for beta in BUDGET_BETAS
    ]


def _contiguous_safe(state: JobState, order: PruneOrder) -> tuple[list[float], list[float], float]:
    """Grid rates on the search split, ascending, stopping at the first rate beyond the drop."""
    prune = state.spec.prune
    x, y = state.search
    rates: list[float] = []
    accuracies: list[float] = []
    safe = 0.0
    for rate in prune.rates:
        acc = evaluate(state, order, rate, x, y)
        rates.append(rate)
        accuracies.append(acc)
        if acc < accuracies[0] - prune.max_accuracy_drop - 1e-12:
            break
        safe = rate
    return rates, accuracies, safe


def choose_budget(
    state: JobState, scores: dict[str, torch.Tensor], store: StageStore, normalize: bool | None = None
) -> tuple[JobState, dict[str, Any]]:
    """The ``budget`` objective: the ranking / recovery option and rate removing the most MACs.

    Each option of :func:`_options` is evaluated on the search split (grid rates up
    to the first failure, then the refinement bisection); the MACs it removes come
    from the cost model (exact for what removal does). Returns the job state with
    the winning prune options (its ``prune.rate`` set to the refined rate) and a
    record of every option tried. The test split plays no part. With
    ``search.budget_metric="latency"`` each option's removed model is timed against
    the original on the job's device (batch 32) and the fastest wins instead.
    """
    metric = state.spec.search.budget_metric if state.spec.search is not None else "macs"
    key = stage_key(
        "budget",
        state.spec.prune.model_dump(),
        state.spec.model.model_dump(),
        state.spec.data.model_dump(),
        state.spec.splits.model_dump(),
        {name: s.tolist() for name, s in sorted(scores.items())},
        normalize,
        *([metric] if metric != "macs" else []),
    )
    cached = store.load_json(key)
    tried: list[dict[str, Any]]
    if cached is not None:
        tried = cached["tried"]
    else:
        tried = []
        graph = state.component_graph() if state.family == "cnn" else None
        for option in _options(state):
            candidate = with_prune(state, option)
            order = candidate.order(scores, normalize=normalize)
            rates, accuracies, safe = _contiguous_safe(candidate, order)
            refinement = refine_safe_rate(
                order,
                rates,
                accuracies,
                safe,
                candidate.spec.prune.max_accuracy_drop,
                _search_evaluator(candidate, order),
                max_steps=candidate.spec.prune.refine_steps,
            )
            rate = refinement.refined_rate
            macs, params = graph.removed_fractions(order.keep_masks(rate)) if graph else (rate, rate)
            entry: dict[str, Any] = {
                **option,
                "recovery": list(candidate.spec.prune.recovery),
                "rate": rate,
                "macs_removed": macs,
                "params_removed": params,
            }
            if metric == "latency":
                entry["speedup"] = measured_speedup(candidate, order.keep_masks(rate))
            tried.append(entry)
        store.save_json(key, {"tried": tried})
    measure = "speedup" if metric == "latency" else "macs_removed"
    best = max(tried, key=lambda t: (t[measure], -tried.index(t)))
    chosen = with_prune(state, {k: best[k] for k in ("cost_exponent", "recovery", "coupled")})
    chosen = replace(
        chosen,
        spec=chosen.spec.model_copy(
            update={"prune": chosen.spec.prune.model_copy(update={"rate": best["rate"]})}
        ),
    )
    return chosen, {"objective": "budget", "metric": metric, "chosen": best, "tried": tried}


def measured_speedup(state: JobState, keep: dict[str, torch.Tensor]) -> float:
    """Speed-up at batch 32 on the job's device of the model ``keep`` leaves, removed (and recovered).

    The removal is the export's (:func:`~pxp.pruning.removal.remove_pruned` of the
    recovered copy), so the option chosen is timed as it would be exported; each
    pair of models gets about one second of interleaved runs.
    """
    x_ref = state.reference[0]
    removal = removed(state, keep, x_ref[:8])
    shape = tuple(x_ref.shape[1:])
    points = measure_latency(
        state.prepared, removal.model, shape, state.device, batch_sizes=(32,), budget_s=1.0
    )
    return points[0].speedup


def _search_evaluator(state: JobState, order: PruneOrder) -> Callable[[float], float]:
    x, y = state.search

    def at(rate: float) -> float:
        return evaluate(state, order, rate, x, y)

    return at


def with_prune(state: JobState, option: dict[str, Any]) -> JobState:
    """``state`` with its prune spec's fields updated from ``option`` (validated again)."""
    prune = state.spec.prune.model_copy(update=option)
    prune = type(prune).model_validate(prune.model_dump())
    return replace(state, spec=state.spec.model_copy(update={"prune": prune}))
