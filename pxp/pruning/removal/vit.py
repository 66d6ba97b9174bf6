"""Structural removal for Vision Transformers: attention heads and MLP neurons.

Planning works on the prepared explicit-attention model
(:mod:`pxp.components.vit`), whose hook points masking uses:

- **heads**: masking zeroes a head's context before the out projection, so
  removing the head's rows of q/k/v and its columns of ``out_proj`` is exact
  (``out_proj``'s bias stays). A block keeps at least one head (``min_keep``).
- **neurons** (fc1 outputs): masking zeroes fc1's output; GELU(0) = 0, so
  removing the fc1 row and the matching fc2 column is exact.
- **fc2** outputs are residual-stream dimensions: the identity path and every
  LayerNorm still see them, so they are never removed, only zeroed (fc2 row
  and bias), which is what masking does.

:func:`standard_form` then turns the removed explicit model back into its
library's classes, so the exported checkpoint loads into a plain torchvision
or timm ViT: timm's ``Attention`` holds any head count (``attn_dim`` may
differ from the embedding width); torchvision's ``nn.MultiheadAttention``
cannot, so a torchvision block that lost heads gets
:class:`pxp.models.compressed.PrunedMultiheadAttention` (same call signature and
state-dict keys).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pxp.components import PrunableLayer
from pxp.components.vit.modules import ExplicitEncoderBlock, ExplicitSelfAttention, ExplicitTimmBlock
from pxp.errors import InvalidSpecError, UnsupportedArchitectureError
from pxp.models.compressed import PrunedMultiheadAttention
from pxp.pruning.removal.plan import ModuleCut, RemovalPlan, checked_mask


def _fc2_of(prepared: nn.Module, fc1: str) -> str:
    parent, _, _ = fc1.rpartition(".")
    mlp = prepared.get_submodule(parent)
    linears = [f"{parent}.{name}" for name, m in mlp.named_children() if isinstance(m, nn.Linear)]
    if len(linears) != 2 or linears[0] != fc1:
        raise UnsupportedArchitectureError(
            f"{parent}: expected an MLP of exactly two Linear layers after {fc1}"
        )
    return linears[1]


class VitPlanner:
    """Turns keep-masks of heads / neurons / fc2 layers into a :class:`RemovalPlan` on the explicit model."""

    def __init__(self, prepared: nn.Module, layers: list[PrunableLayer]) -> None:
        self.layers = list(layers)
        self._fc2: dict[str, str] = {}
        self._head_dim: dict[str, int] = {}
        for layer in self.layers:
            if layer.kind == "heads":
                attn = prepared.get_submodule(layer.producer)
                if not isinstance(attn, ExplicitSelfAttention):
                    raise UnsupportedArchitectureError(
                        f"{layer.producer} is not an explicit attention module"
                    )
                self._head_dim[layer.name] = attn.head_dim
            elif layer.kind == "neurons":
                self._fc2[layer.name] = _fc2_of(prepared, layer.producer)
            elif layer.kind != "fc2":
                raise InvalidSpecError(f"ViT removal cannot handle component kind {layer.kind!r}")

    def plan(self, keep: dict[str, torch.Tensor]) -> RemovalPlan:
        plan = RemovalPlan()
        for layer in self.layers:
            mask = checked_mask(keep, layer)
            kept, pruned = mask.nonzero().flatten(), (~mask).nonzero().flatten()
            if layer.kind == "fc2":
                plan.removed[layer.name], plan.zeroed[layer.name] = [], pruned.tolist()
                if pruned.numel():
                    plan.cuts[layer.producer] = ModuleCut(zero_out=pruned)
                continue
            plan.removed[layer.name], plan.zeroed[layer.name] = pruned.tolist(), []
            if not pruned.numel():
                continue
            if layer.kind == "heads":
                d = self._head_dim[layer.name]
                rows = (kept.view(-1, 1) * d + torch.arange(d).view(1, -1)).flatten()
                attn = layer.producer
                plan.cuts[attn] = ModuleCut(heads_keep=kept)
                for proj in ("q_proj", "k_proj", "v_proj"):
                    plan.cuts[f"{attn}.{proj}"] = ModuleCut(out_keep=rows)
                plan.cuts[f"{attn}.out_proj"] = ModuleCut(in_keep=rows)
            else:
                plan.cuts[layer.producer] = ModuleCut(out_keep=kept)
                plan.cuts[self._fc2[layer.name]] = ModuleCut(in_keep=kept)
        return plan

    def changed_modules(self, plan: RemovalPlan) -> list[str]:
        """Modules of the *standard-form* model whose sizes changed (what the manifest records)."""
        names = []
        for layer in self.layers:
            if not plan.removed.get(layer.name):
                continue
            if layer.kind == "heads":
                names.append(layer.producer)
            elif layer.kind == "neurons":
                names += [layer.producer, self._fc2[layer.name]]
        return names

    def finalize(self, model: nn.Module) -> nn.Module:
        return standard_form(model)


def _fused_qkv(attn: ExplicitSelfAttention) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise UnsupportedArchitectureError("attention with biases on only some of q/k/v cannot be fused back")
    bias = None if biases[0] is None else torch.cat([b for b in biases if b is not None]).detach()
    return weight, bias


def _torchvision_attention(attn: ExplicitSelfAttention) -> nn.Module:
    weight, bias = _fused_qkv(attn)
    embed = attn.q_proj.in_features
    inner = attn.num_heads * attn.head_dim
    dropout = attn.attn_drop.p if isinstance(attn.attn_drop, nn.Dropout) else 0.0
    if abs(attn.scores.scale - attn.head_dim**-0.5) > 1e-12 * attn.head_dim**-0.5:
        raise UnsupportedArchitectureError(
            "attention with a non-standard scale cannot be expressed by torchvision"
        )
    module: nn.Module
    if inner == embed:
        module = nn.MultiheadAttention(
            embed, attn.num_heads, dropout=dropout, bias=bias is not None, batch_first=True
        )
        with torch.no_grad():
            module.in_proj_weight.copy_(weight)
            if bias is not None:
                module.in_proj_bias.copy_(bias)
            module.out_proj.weight.copy_(attn.out_proj.weight)
            if attn.out_proj.bias is not None:
                module.out_proj.bias.copy_(attn.out_proj.bias)
    else:
        module = PrunedMultiheadAttention(embed, attn.num_heads, attn.head_dim, bias=bias is not None)
        module.in_proj_weight = nn.Parameter(weight.clone(), requires_grad=False)
        module.in_proj_bias = None if bias is None else nn.Parameter(bias.clone(), requires_grad=False)
        module.out_proj = attn.out_proj
    return module.eval().requires_grad_(False)


def _torchvision_block(block: ExplicitEncoderBlock) -> nn.Module:
    from torchvision.models.vision_transformer import EncoderBlock

    attn = block.self_attention
    assert isinstance(attn, ExplicitSelfAttention)
    standard: Any = EncoderBlock.__new__(EncoderBlock)
    nn.Module.__init__(standard)
    standard.num_heads = attn.num_heads
    standard.ln_1 = block.ln_1
    standard.self_attention = _torchvision_attention(attn)
    standard.dropout = block.dropout
    standard.ln_2 = block.ln_2
    standard.mlp = block.mlp
    return standard.eval()


def _timm_attention(attn: ExplicitSelfAttention) -> nn.Module:
    from timm.layers import Attention

    weight, bias = _fused_qkv(attn)
    standard: Any = Attention(
        attn.q_proj.in_features,
        num_heads=attn.num_heads,
        attn_head_dim=attn.head_dim,
        qkv_bias=bias is not None,
        proj_bias=attn.out_proj.bias is not None,
    )
    if abs(float(standard.scale) - attn.scores.scale) > 1e-12 * attn.scores.scale:
        raise UnsupportedArchitectureError("attention with a non-standard scale cannot be expressed by timm")
    standard.qkv.weight = nn.Parameter(weight.clone(), requires_grad=False)
    standard.qkv.bias = None if bias is None else nn.Parameter(bias.clone(), requires_grad=False)
    standard.proj = attn.out_proj
    standard.attn_drop = attn.attn_drop
    standard.proj_drop = attn.proj_drop
    return standard.eval().requires_grad_(False)


def _timm_block(block: ExplicitTimmBlock) -> nn.Module:
    from timm.models.vision_transformer import Block

    attn = block.attn
    assert isinstance(attn, ExplicitSelfAttention)
    standard: Any = Block.__new__(Block)
    nn.Module.__init__(standard)
    for name in ("norm1", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
        setattr(standard, name, getattr(block, name))
    standard.attn = _timm_attention(attn)
    return standard.eval()


def _restore_timm_top(model: nn.Module) -> None:
    """Undo the converter's subclass of a timm ViT (token / head means as modules), if any."""
    cls = type(model)
    if cls.__module__ != "pxp.components.vit.convert" or not cls.__bases__:
        return
    model.__class__ = cls.__bases__[0]
    for name in ("token_mean", "head_mean"):
        if name in model._modules:
            del model._modules[name]


def standard_form(model: nn.Module) -> nn.Module:
    """``model`` (explicit-attention ViT, modified in place: pass a copy) in torchvision / timm classes."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ExplicitEncoderBlock):
                setattr(parent, name, _torchvision_block(child))
            elif isinstance(child, ExplicitTimmBlock):
                setattr(parent, name, _timm_block(child))
    for module in list(model.modules()):
        _restore_timm_top(module)
    return model.eval()
