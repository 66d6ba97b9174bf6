"""Structural removal of MLP neurons in ConvNeXt, Swin and EVA blocks (:mod:`pxp.components.vit.mlp`).

A pruned hidden unit loses its rows of the first projection(s) (bias included) and its
column of ``fc2``; ``fc2``'s bias stays. Masking zeroes the unit before ``fc2`` (GELU(0) = 0;
SwiGLU: SiLU(gate) · 0 = 0), so the removed model computes what the masked one does.
No LayerNorm sees the hidden units (MLPs that normalize them are refused when the layers
are found), so nothing else changes. :meth:`MlpPlanner.finalize` fuses EVA02's split
``GluMlp`` back, so the export loads into the plain timm model.
"""

from __future__ import annotations

import torch
from torch import nn

from pxp.components import PrunableLayer
from pxp.components.vit.mlp import MlpUnits, SplitGluMlp, find_mlp_units, fuse_glu_mlps
from pxp.errors import InvalidSpecError
from pxp.pruning.removal.plan import ModuleCut, RemovalPlan, checked_mask


class MlpPlanner:
    """Turns keep-masks of MLP neurons into a :class:`RemovalPlan` (the same model classes after cutting)."""

    def __init__(self, prepared: nn.Module, layers: list[PrunableLayer]) -> None:
        self.layers = list(layers)
        units = {u.hook: u for u in find_mlp_units(prepared)}
        self._units: dict[str, MlpUnits] = {}
        #: Hook point -> the fused module names after :meth:`finalize` (SplitGluMlp -> GluMlp.fc1).
        self._standard: dict[str, list[str]] = {}
        for layer in self.layers:
            if layer.kind != "neurons" or layer.name not in units:
                raise InvalidSpecError(
                    f"{layer.name} ({layer.kind}) is not an MLP neuron layer of a ConvNeXt / Swin / EVA block"
                )
            u = units[layer.name]
            self._units[layer.name] = u
            parent = u.hook.rpartition(".")[0]
            if isinstance(prepared.get_submodule(parent), SplitGluMlp):
                self._standard[layer.name] = [f"{parent}.fc1", u.columns]
            else:
                self._standard[layer.name] = [*u.rows, u.columns]

    def plan(self, keep: dict[str, torch.Tensor]) -> RemovalPlan:
        """Which rows / columns survive for these keep-masks."""
        plan = RemovalPlan()
        for layer in self.layers:
            mask = checked_mask(keep, layer)
            kept, pruned = mask.nonzero().flatten(), (~mask).nonzero().flatten()
            plan.removed[layer.name], plan.zeroed[layer.name] = pruned.tolist(), []
            if not pruned.numel():
                continue
            units = self._units[layer.name]
            for rows in units.rows:
                plan.cuts[rows] = ModuleCut(out_keep=kept)
            plan.cuts[units.columns] = ModuleCut(in_keep=kept)
        return plan

    def changed_modules(self, plan: RemovalPlan) -> list[str]:
        """Modules of the finalized model whose sizes changed (what the manifest records)."""
        return [
            name
            for layer in self.layers
            if plan.removed.get(layer.name)
            for name in self._standard[layer.name]
        ]

    def finalize(self, model: nn.Module) -> nn.Module:
        """The cut copy with EVA02's split GluMlps fused back (timm's own classes throughout)."""
        return fuse_glu_mlps(model)
