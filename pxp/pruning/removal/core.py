"""Physical removal of pruned components, verified against masking."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pxp.components import Family, PrunableLayer
from pxp.errors import UnsupportedArchitectureError, VerificationError
from pxp.pruning.masking import masked
from pxp.pruning.removal.plan import Planner, RemovalPlan, cut_copy

#: Default verification tolerance: max |removed − masked| ≤ ATOL + RTOL · max |masked| over the batch.
#: Removal only reorders float32 sums (fewer terms), which moves logits by ~1e-6 relative;
#: a wrongly removed channel moves them by the order of the logits themselves. ATOL is only a
#: floor for logits that are all ~0.
ATOL = 1e-7
RTOL = 1e-4


@dataclass
class RemovalResult:
    #: The smaller model (a new object; the prepared model is untouched), eval mode.
    model: nn.Module
    plan: RemovalPlan
    #: Per prunable layer: components that survive physically (original numbering).
    kept_indices: dict[str, list[int]]
    params_before: int
    params_after: int
    #: Max |removed − masked| logit difference found by verification, and the bound it met.
    max_abs_diff: float
    tolerance: float
    #: Type and new sizes of every module that changed (what the manifest stores).
    modules: dict[str, dict] = field(default_factory=dict)

    @property
    def removed_components(self) -> int:
        return sum(len(v) for v in self.plan.removed.values())

    @property
    def zeroed_components(self) -> int:
        return sum(len(v) for v in self.plan.zeroed.values())

    @property
    def params_removed_fraction(self) -> float:
        return 1.0 - self.params_after / max(self.params_before, 1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def verify_equivalent(
    reference: Callable[[torch.Tensor], torch.Tensor],
    candidate: nn.Module,
    x: torch.Tensor,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    batch_size: int = 64,
) -> tuple[float, float]:
    """Check ``candidate(x)`` against ``reference(x)``; return (max abs diff, tolerance).

    Raises :class:`VerificationError` when max |Δ| > ``atol + rtol · max |reference|``
    or the shapes differ.
    """
    worst, scale = 0.0, 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        want, got = reference(xb), candidate(xb)
        if want.shape != got.shape:
            raise VerificationError(
                f"removed model returns shape {tuple(got.shape)}, masked model {tuple(want.shape)}"
            )
        if not bool(torch.isfinite(got).all()):
            raise VerificationError("removed model returns non-finite logits")
        worst = max(worst, float((want - got).abs().max()))
        scale = max(scale, float(want.abs().max()))
    tolerance = atol + rtol * scale
    if not worst <= tolerance:
        raise VerificationError(
            f"removed model's logits differ from the masked model's by {worst:.3g} "
            f"(tolerance {tolerance:.3g} = {atol:g} + {rtol:g} × max|logit| {scale:.3g})"
        )
    return worst, tolerance


def removal_planner(
    prepared: nn.Module, family: Family, layers: list[PrunableLayer], example: torch.Tensor
) -> Planner:
    """The family's :class:`Planner`; ``example`` (one input suffices) traces a CNN's dependency graph."""
    if family == "cnn":
        from pxp.pruning.removal.cnn import CnnChannelGraph

        return CnnChannelGraph(prepared, layers, example)
    if family == "vit":
        from pxp.components.vit import is_explicit
        from pxp.components.vit.mlp import is_mlp_model

        if not is_explicit(prepared) and is_mlp_model(prepared):
            from pxp.pruning.removal.mlp import MlpPlanner

            return MlpPlanner(prepared, layers)
        from pxp.pruning.removal.vit import VitPlanner

        return VitPlanner(prepared, layers)
    raise UnsupportedArchitectureError(f"unknown model family {family!r}")


def remove_pruned(
    prepared: nn.Module,
    family: Family,
    layers: list[PrunableLayer],
    keep: dict[str, torch.Tensor],
    x: torch.Tensor,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    planner: Planner | None = None,
) -> RemovalResult:
    """A physically smaller copy of ``prepared`` that computes what ``masked(prepared, layers, keep)`` does.

    ``x`` (a batch of evaluation inputs) traces the dependency graph and verifies
    the result: if the removed model's logits differ from the masked model's beyond
    the tolerance, :class:`VerificationError` is raised and nothing is returned.
    ``planner`` (from :func:`removal_planner`) may be passed to reuse its analysis.
    """
    if planner is None:
        planner = removal_planner(prepared, family, layers, x)
    plan = planner.plan(keep)
    model = cut_copy(prepared, plan.cuts).eval()
    model = planner.finalize(model)
    for p in model.parameters():
        p.requires_grad_(False)

    def reference(xb: torch.Tensor) -> torch.Tensor:
        with masked(prepared, layers, keep):
            return prepared(xb)

    worst, tolerance = verify_equivalent(reference, model, x, atol=atol, rtol=rtol)
    from pxp.models.compressed import module_spec

    changed = planner.changed_modules(plan)
    kept = {}
    for layer in layers:
        gone = set(plan.removed.get(layer.name, []))
        kept[layer.name] = [i for i in range(layer.size) if i not in gone]
    return RemovalResult(
        model=model,
        plan=plan,
        kept_indices=kept,
        params_before=count_params(prepared),
        params_after=count_params(model),
        max_abs_diff=worst,
        tolerance=tolerance,
        modules={name: module_spec(model.get_submodule(name)) for name in changed},
    )
