"""The criteria registry: every criterion maps (prepared model, layers, data) to per-component scores.

Higher score = more important; the least important components are pruned first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pxp.attribution.engine import Signal, collect, collect_integrated_gradients
from pxp.attribution.memory import fit_batch_size
from pxp.components import Family, PrunableLayer
from pxp.errors import InvalidSpecError
from pxp.spec import AttributionSpec, CriterionName

Scores = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ScoringContext:
    model: nn.Module
    family: Family
    layers: list[PrunableLayer]
    x: torch.Tensor
    y: torch.Tensor


Criterion = Callable[[ScoringContext, AttributionSpec], Scores]
#: The implementations, keyed by the names in :data:`pxp.spec.CRITERIA` (the one list of names).
CRITERIA: dict[str, Criterion] = {}


def register(name: CriterionName) -> Callable[[Criterion], Criterion]:
    def decorator(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return decorator


def _batch_size(ctx: ScoringContext, spec: AttributionSpec) -> int:
    """The spec's batch size, lowered where one batch would not fit the free memory.

    Measured on ``ctx.model`` before any composite hooks it (one plain forward of one sample).
    """
    return fit_batch_size(ctx.model, ctx.x, spec.batch_size)


def _collect(
    model: nn.Module,
    ctx: ScoringContext,
    spec: AttributionSpec,
    signal: Signal,
    batch_size: int | None = None,
) -> Scores:
    return collect(
        model,
        ctx.layers,
        ctx.x,
        ctx.y,
        signal=signal,
        batch_size=batch_size if batch_size is not None else _batch_size(ctx, spec),
        signed=spec.aggregation == "signed",
    )


@register("lrp")
def lrp_scores(ctx: ScoringContext, spec: AttributionSpec) -> Scores:
    from pxp.attribution.lrp import build_composite
    from pxp.attribution.support import require_lrp_support

    require_lrp_support(ctx.model, type(ctx.model).__name__, ctx.family)
    batch_size = _batch_size(ctx, spec)
    composite = build_composite(ctx.model, ctx.family, spec.effective_composite())
    with composite.context(ctx.model) as canonized:
        return _collect(canonized, ctx, spec, "relevance", batch_size)


@register("gradient")
def gradient_scores(ctx: ScoringContext, spec: AttributionSpec) -> Scores:
    return _collect(ctx.model, ctx, spec, "grad")


@register("taylor")
def taylor_scores(ctx: ScoringContext, spec: AttributionSpec) -> Scores:
    """|activation × gradient| per component."""
    return _collect(ctx.model, ctx, spec, "act_x_grad")


@register("integrated_gradients")
def integrated_gradients_scores(ctx: ScoringContext, spec: AttributionSpec) -> Scores:
    return collect_integrated_gradients(
        ctx.model,
        ctx.layers,
        ctx.x,
        ctx.y,
        steps=spec.ig_steps,
        batch_size=_batch_size(ctx, spec),
        signed=spec.aggregation == "signed",
    )


@register("weight")
def weight_scores(ctx: ScoringContext, spec: AttributionSpec) -> Scores:
    """L1 norm of the weights that produce each component."""
    scores: Scores = {}
    for layer in ctx.layers:
        if layer.kind == "filters":
            conv = ctx.model.get_submodule(layer.producer)
            assert isinstance(conv, nn.Conv2d)
            weight = conv.weight.detach()
            scores[layer.name] = weight.abs().flatten(1).sum(1).double().cpu()
        else:
            from pxp.components.vit import weight_norms

            scores[layer.name] = weight_norms(ctx.model, layer).double().cpu()
    return scores


@register("random")
def random_scores(ctx: ScoringContext, spec: AttributionSpec) -> Scores:
    """Seeded uniform scores over every layer (the reference code scored only the first)."""
    generator = torch.Generator().manual_seed(spec.seed)
    return {
        layer.name: torch.rand(layer.size, generator=generator, dtype=torch.float64) for layer in ctx.layers
    }


def compute_scores(ctx: ScoringContext, spec: AttributionSpec) -> Scores:
    if spec.criterion not in CRITERIA:
        raise InvalidSpecError(f"unknown criterion {spec.criterion!r}; known: {sorted(CRITERIA)}")
    scores = CRITERIA[spec.criterion](ctx, spec)
    missing = [layer.name for layer in ctx.layers if layer.name not in scores]
    if missing:
        raise RuntimeError(f"criterion {spec.criterion} produced no scores for {missing}")
    return scores
