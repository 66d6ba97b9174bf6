"""A removal plan as data: per module, which output / input indices survive and which rows are zeroed.

Planning (which channels can go, per family) and cutting (slicing tensors) are
separate, so the exported model and every per-rate model of the fast curve
sweep are sliced by the same code (:func:`cut_copy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from pxp.components import PrunableLayer
from pxp.errors import InvalidSpecError, UnsupportedArchitectureError
from pxp.models.compressed import resize_module

#: Module types whose channels :func:`cut_tensors` can slice.
SLICEABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


@dataclass(frozen=True)
class ModuleCut:
    """How one module changes. Index tensors are sorted int64; ``None`` means unchanged.

    ``zero_out`` (indices in the *original* output numbering) zeroes weight rows and
    bias (BN: affine) before slicing: the mask semantics for a pruned channel that
    must stay because it is coupled to kept ones (a residual stream).
    """

    out_keep: torch.Tensor | None = None
    in_keep: torch.Tensor | None = None
    zero_out: torch.Tensor | None = None
    #: For attention modules: kept heads (original numbering).
    heads_keep: torch.Tensor | None = None

    def signature(self) -> tuple:
        """Hashable identity: two cuts with equal signatures produce identical tensors."""
        return tuple(
            None if t is None else tuple(t.tolist())
            for t in (self.out_keep, self.in_keep, self.zero_out, self.heads_keep)
        )


@dataclass
class RemovalPlan:
    cuts: dict[str, ModuleCut] = field(default_factory=dict)
    #: Per prunable layer: components physically removed / kept but zeroed (original numbering).
    removed: dict[str, list[int]] = field(default_factory=dict)
    zeroed: dict[str, list[int]] = field(default_factory=dict)


class Planner(Protocol):
    """A family's removal planner (built once per prepared model, reused across rates)."""

    def plan(self, keep: dict[str, torch.Tensor]) -> RemovalPlan:
        """Which indices of which modules survive, for these keep-masks."""
        ...

    def changed_modules(self, plan: RemovalPlan) -> list[str]:
        """Names, in the finalized model, of the modules whose sizes ``plan`` changes."""
        ...

    def finalize(self, model: nn.Module) -> nn.Module:
        """The cut copy in the form that is exported (e.g. a ViT back in its library's classes)."""
        ...


def resized(plan: RemovalPlan) -> list[str]:
    return [
        name
        for name, cut in plan.cuts.items()
        if cut.out_keep is not None or cut.in_keep is not None or cut.heads_keep is not None
    ]


def _index(t: torch.Tensor, dim: int, keep: torch.Tensor | None) -> torch.Tensor:
    return t if keep is None else t.index_select(dim, keep.to(t.device))


def _zeroed(t: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or rows is None or rows.numel() == 0:
        return t
    t = t.clone()
    t[rows.to(t.device)] = 0
    return t


def cut_tensors(module: nn.Module, cut: ModuleCut) -> dict[str, torch.Tensor]:
    """The module's own parameters and buffers after ``cut``; the module is not modified."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return _cut_depthwise(module, cut)
    if isinstance(module, nn.Conv2d):
        out: dict[str, torch.Tensor] = {}
        weight = _zeroed(module.weight, cut.zero_out)
        assert weight is not None
        out["weight"] = _index(_index(weight, 0, cut.out_keep), 1, cut.in_keep)
        bias = _zeroed(module.bias, cut.zero_out)
        if bias is not None:
            out["bias"] = _index(bias, 0, cut.out_keep)
        return out
    if isinstance(module, nn.Linear):
        weight = _zeroed(module.weight, cut.zero_out)
        assert weight is not None
        out = {"weight": _index(_index(weight, 0, cut.out_keep), 1, cut.in_keep)}
        bias = _zeroed(module.bias, cut.zero_out)
        if bias is not None:
            out["bias"] = _index(bias, 0, cut.out_keep)
        return out
    if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        keep = cut.out_keep if cut.out_keep is not None else cut.in_keep
        out = {}
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(module, name)
            if t is None:
                continue
            if name in ("weight", "bias"):
                t = _zeroed(t, cut.zero_out)
            out[name] = _index(t, 0, keep)
        return out
    raise UnsupportedArchitectureError(f"structural removal cannot slice a {type(module).__name__}")


def _local_keep(keep: torch.Tensor, size: int, groups: int, what: str) -> torch.Tensor:
    """The per-group positions kept by ``keep`` (global indices), which must be the same in every group."""
    per = size // groups
    local = keep[keep < per]
    if keep.numel() != local.numel() * groups or not torch.equal(
        keep, (torch.arange(groups)[:, None] * per + local[None, :]).flatten()
    ):
        raise UnsupportedArchitectureError(
            f"a grouped convolution (groups={groups}) must keep the same {what} channels in every group"
        )
    return local


def _cut_grouped(module: nn.Conv2d, cut: ModuleCut) -> dict[str, torch.Tensor]:
    """A grouped (non-depthwise) conv keeps its groups; every group loses the same local channels.

    Output channels index the weight's rows; input channels its per-group input
    slice (dimension 1 holds ``in_channels // groups`` positions).
    """
    weight = _zeroed(module.weight, cut.zero_out)
    assert weight is not None
    if cut.out_keep is not None:
        _local_keep(cut.out_keep, module.out_channels, module.groups, "output")
    out = {"weight": _index(weight, 0, cut.out_keep)}
    if cut.in_keep is not None:
        local = _local_keep(cut.in_keep, module.in_channels, module.groups, "input")
        out["weight"] = _index(out["weight"], 1, local)
    bias = _zeroed(module.bias, cut.zero_out)
    if bias is not None:
        out["bias"] = _index(bias, 0, cut.out_keep)
    return out


def _cut_depthwise(module: nn.Conv2d, cut: ModuleCut) -> dict[str, torch.Tensor]:
    """A depthwise conv (one filter per channel): its input and output channels go together."""
    if not module.groups == module.in_channels == module.out_channels:
        return _cut_grouped(module, cut)
    keep = cut.out_keep if cut.out_keep is not None else cut.in_keep
    if cut.out_keep is not None and cut.in_keep is not None and not torch.equal(cut.out_keep, cut.in_keep):
        raise UnsupportedArchitectureError("a depthwise conv must keep the same input and output channels")
    weight = _zeroed(module.weight, cut.zero_out)
    assert weight is not None
    out = {"weight": _index(weight, 0, keep)}
    bias = _zeroed(module.bias, cut.zero_out)
    if bias is not None:
        out["bias"] = _index(bias, 0, keep)
    return out


def apply_cuts(model: nn.Module, cuts: dict[str, ModuleCut]) -> None:
    """Slice every planned module of ``model`` in place (call it on a copy).

    New tensors never share storage with the old ones, so a copy that shared the
    old tensors with its source (see :func:`cut_copy`) stays independent of it.
    """
    from pxp.components.vit.modules import ExplicitSelfAttention
    from pxp.models.compressed import module_spec

    for name, cut in cuts.items():
        module = model.get_submodule(name)
        if isinstance(module, ExplicitSelfAttention):
            if cut.heads_keep is not None:
                module.num_heads = int(cut.heads_keep.numel())
            continue
        old = {id(t): t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))}
        tensors = cut_tensors(module, cut)
        spec = module_spec(module)
        spec.update(_sizes(module, tensors))
        resize_module(model, name, spec)
        resized = model.get_submodule(name)
        for key, value in tensors.items():
            value = value.detach().contiguous()
            if any(value.data_ptr() == t.data_ptr() for t in old.values()):
                value = value.clone()
            if key in resized._parameters:
                resized._parameters[key] = nn.Parameter(value, requires_grad=False)
            else:
                resized._buffers[key] = value


def cut_copy(model: nn.Module, cuts: dict[str, ModuleCut], *, share_unchanged: bool = False) -> nn.Module:
    """A deep copy of ``model`` with ``cuts`` applied; ``model`` is not modified.

    The tensors that the cuts replace are not copied first (for VGG-16 that is
    most of its 0.5 GB). With ``share_unchanged`` the copy's modules also hold
    ``model``'s own tensors wherever the cuts leave a module's tensors as they are,
    instead of copies: for a copy that is only evaluated and then dropped (the fast
    sweep's per-rate models), which halves the copy's cost on a digits ResNet-18.
    Such a copy must not be trained or modified in place.
    """
    import copy

    memo: dict[int, object] = {}
    shared_from = [model] if share_unchanged else [model.get_submodule(name) for name in cuts]
    for module in shared_from:
        for t in (*module.parameters(recurse=share_unchanged), *module.buffers(recurse=share_unchanged)):
            memo[id(t)] = t
    clone = copy.deepcopy(model, memo)
    apply_cuts(clone, cuts)
    for name in cuts:
        before = model.get_submodule(name)
        shared = {id(t) for t in (*before.parameters(recurse=False), *before.buffers(recurse=False))}
        after = clone.get_submodule(name)
        for key, t in (*after.named_parameters(recurse=False), *after.named_buffers(recurse=False)):
            if id(t) in shared:
                setattr(after, key, copy.deepcopy(t))
    return clone


def _sizes(module: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    weight = tensors["weight"] if "weight" in tensors else tensors["running_mean"]
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels != 1:
        n = int(weight.shape[0])
        return {"out_channels": n, "in_channels": n, "groups": n}
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        g = module.groups
        return {"out_channels": int(weight.shape[0]), "in_channels": int(weight.shape[1]) * g, "groups": g}
    if isinstance(module, nn.Conv2d):
        return {"out_channels": int(weight.shape[0]), "in_channels": int(weight.shape[1])}
    if isinstance(module, nn.Linear):
        return {"out_features": int(weight.shape[0]), "in_features": int(weight.shape[1])}
    return {"num_features": int(weight.shape[0])}


def checked_mask(keep: dict[str, torch.Tensor], layer: PrunableLayer) -> torch.Tensor:
    """``layer``'s keep-mask as a CPU bool tensor; an error if missing, mis-sized or keeping nothing."""
    mask = keep.get(layer.name)
    if mask is None or mask.numel() != layer.size:
        raise InvalidSpecError(f"keep-mask for layer {layer.name} missing or of wrong size")
    mask = mask.to("cpu", torch.bool)
    if not bool(mask.any()):
        raise InvalidSpecError(
            f"layer {layer.name} keeps no component; structural removal needs min_keep >= 1"
        )
    return mask
