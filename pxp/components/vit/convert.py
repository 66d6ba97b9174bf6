"""Turn torchvision / timm Vision Transformers into the explicit-attention form, and back.

Every torchvision ``EncoderBlock`` and timm ``Block`` found anywhere in the model
is replaced by an explicit block (:mod:`pxp.components.vit.modules`) whose
q/k/v projections are copies of the fused input projection's rows and whose
other submodules are the original ones, under the original names. timm models
that average tokens (``global_pool='avg'``) or classifier heads (distilled DeiT)
get that mean as a module too, because LRP must split relevance through it by
contribution rather than by the gradient's uniform ``1/n``.

The forward output is unchanged up to float rounding (the fused kernels sum in
a different order). :func:`convert_in_place` records every edit so
:class:`ViTCanonizer` can undo it; :func:`pxp.components.prepare_model` converts
a deep copy, so the user's model is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock
from zennit.canonizers import Canonizer

from pxp.components.vit.modules import (
    EXPLICIT_BLOCKS,
    ExplicitEncoderBlock,
    ExplicitSelfAttention,
    ExplicitTimmBlock,
    StackedMean,
)
from pxp.errors import UnsupportedArchitectureError


class Edits:
    """Reversible module edits: replaced children, added children, swapped classes."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def replace(self, parent: nn.Module, name: str, new: nn.Module) -> None:
        old = getattr(parent, name)
        setattr(parent, name, new)
        self._undo.append(lambda: setattr(parent, name, old))

    def add(self, parent: nn.Module, name: str, new: nn.Module) -> None:
        if hasattr(parent, name):
            raise UnsupportedArchitectureError(f"{type(parent).__name__} already has an attribute {name!r}")
        parent.add_module(name, new)
        self._undo.append(lambda: delattr(parent, name))

    def set_class(self, obj: nn.Module, cls: type) -> None:
        old = obj.__class__
        obj.__class__ = cls
        self._undo.append(lambda: setattr(obj, "__class__", old))

    def revert(self) -> None:
        while self._undo:
            self._undo.pop()()


def _linear_from_rows(weight: torch.Tensor, bias: torch.Tensor | None, rows: slice) -> nn.Linear:
    w = weight[rows]
    linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
        if bias is not None:
            linear.bias.copy_(bias[rows])
    linear.requires_grad_(weight.requires_grad)
    return linear


def _explicit_mha(mha: nn.MultiheadAttention, where: str) -> ExplicitSelfAttention:
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
        raise UnsupportedArchitectureError(
            f"{where}: attention with separate q/k/v dimensions is not supported"
        )
    if mha.bias_k is not None or mha.bias_v is not None or mha.add_zero_attn:
        raise UnsupportedArchitectureError(
            f"{where}: attention with bias_k/bias_v/add_zero_attn is not supported"
        )
    if not mha.batch_first:
        raise UnsupportedArchitectureError(f"{where}: only batch_first attention is supported")
    e = mha.embed_dim
    w, b = mha.in_proj_weight, mha.in_proj_bias
    return ExplicitSelfAttention(
        q_proj=_linear_from_rows(w, b, slice(0, e)),
        k_proj=_linear_from_rows(w, b, slice(e, 2 * e)),
        v_proj=_linear_from_rows(w, b, slice(2 * e, 3 * e)),
        out_proj=mha.out_proj,
        num_heads=mha.num_heads,
        scale=mha.head_dim**-0.5,
        attn_drop=nn.Dropout(mha.dropout),
    )


def _explicit_torchvision_block(block: EncoderBlock, where: str) -> ExplicitEncoderBlock:
    if not isinstance(block.self_attention, nn.MultiheadAttention):
        raise UnsupportedArchitectureError(f"{where}.self_attention is not an nn.MultiheadAttention")
    return ExplicitEncoderBlock(
        ln_1=block.ln_1,
        self_attention=_explicit_mha(block.self_attention, f"{where}.self_attention"),
        dropout=block.dropout,
        ln_2=block.ln_2,
        mlp=block.mlp,
    )


def _is_timm(module: nn.Module) -> bool:
    return any(cls.__module__.startswith("timm.") for cls in type(module).__mro__)


def _explicit_timm_attention(attn: nn.Module, where: str) -> ExplicitSelfAttention:
    from timm.layers import Attention

    if type(attn) is not Attention:
        raise UnsupportedArchitectureError(f"{where}: timm attention {type(attn).__name__} is not supported")
    for part in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, part, nn.Identity()), nn.Identity):
            raise UnsupportedArchitectureError(f"{where}: timm attention with {part} is not supported")
    if getattr(attn, "gate", None) is not None:
        raise UnsupportedArchitectureError(f"{where}: gated timm attention is not supported")
    a = attn.num_heads * attn.head_dim
    w, b = attn.qkv.weight, attn.qkv.bias
    return ExplicitSelfAttention(
        q_proj=_linear_from_rows(w, b, slice(0, a)),
        k_proj=_linear_from_rows(w, b, slice(a, 2 * a)),
        v_proj=_linear_from_rows(w, b, slice(2 * a, 3 * a)),
        out_proj=attn.proj,
        num_heads=attn.num_heads,
        scale=float(attn.scale),
        attn_drop=attn.attn_drop,
        proj_drop=attn.proj_drop,
    )


def _explicit_timm_block(block: Any, where: str) -> ExplicitTimmBlock:
    from timm.layers import Mlp

    if type(block.mlp) is not Mlp or not isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity):
        raise UnsupportedArchitectureError(f"{where}.mlp: only timm's plain Mlp (fc1, act, fc2) is supported")
    return ExplicitTimmBlock(
        norm1=block.norm1,
        attn=_explicit_timm_attention(block.attn, f"{where}.attn"),
        ls1=block.ls1,
        drop_path1=block.drop_path1,
        norm2=block.norm2,
        mlp=block.mlp,
        ls2=block.ls2,
        drop_path2=block.drop_path2,
    )


def _timm_block_types() -> tuple[type, ...]:
    """timm's transformer block classes; only ``Block`` (pre-norm) is supported."""
    import timm.models.vision_transformer as tv

    names = (
        "Block",
        "ResPostBlock",
        "ParallelScalingBlock",
        "DiffParallelScalingBlock",
        "ParallelThingsBlock",
    )
    return tuple(getattr(tv, n) for n in names if hasattr(tv, n))


_EXPLICIT_CLASSES: dict[tuple[type, bool, bool], type] = {}


def _explicit_timm_class(base: Any, avg_pool: bool, distilled: bool) -> type:
    """A subclass of a timm ViT class whose pooling / head averaging go through modules (cached per base)."""
    key = (base, avg_pool, distilled)
    if key in _EXPLICIT_CLASSES:
        return _EXPLICIT_CLASSES[key]
    methods: dict[str, Any] = {
        "__module__": __name__,
        "__doc__": f"{base.__name__} with explicit means for LRP.",
    }
    if avg_pool:

        def pool(self: Any, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
            pool_type = self.global_pool if pool_type is None else pool_type
            if pool_type != "avg" or self.attn_pool is not None:
                return base.pool(self, x, pool_type)
            tokens = x if getattr(self, "pool_include_prefix", False) else x[:, self.num_prefix_tokens :]
            return self.token_mean(tokens)

        methods["pool"] = pool
    if distilled:

        def forward_head(self: Any, x: torch.Tensor, pre_logits: bool = False) -> Any:
            cls_token, dist_token = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
            if pre_logits:
                return self.head_mean(torch.stack([cls_token, dist_token], dim=-1))
            logits, logits_dist = self.head(cls_token), self.head_dist(dist_token)
            if self.distilled_training and self.training:
                return logits, logits_dist
            return self.head_mean(torch.stack([logits, logits_dist], dim=-1))

        methods["forward_head"] = forward_head
    _EXPLICIT_CLASSES[key] = type(f"Explicit{base.__name__}", (base,), methods)
    return _EXPLICIT_CLASSES[key]


def _convert_timm_top(model: nn.Module, edits: Edits) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return
    if getattr(model, "attn_pool", None) is not None:
        raise UnsupportedArchitectureError(
            "timm ViTs with attention pooling (global_pool='map') are not supported"
        )
    if model.global_pool not in ("token", "avg"):
        raise UnsupportedArchitectureError(
            f"timm global_pool={model.global_pool!r} is not supported (use 'token' or 'avg')"
        )
    avg_pool = model.global_pool == "avg"
    distilled = hasattr(model, "head_dist") and hasattr(model, "dist_token")
    if not (avg_pool or distilled):
        return
    if avg_pool:
        edits.add(model, "token_mean", StackedMean(dim=1))
    if distilled:
        edits.add(model, "head_mean", StackedMean(dim=-1))
    edits.set_class(model, _explicit_timm_class(type(model), avg_pool, distilled))


def is_explicit(model: nn.Module) -> bool:
    """Whether ``model`` is already in explicit-attention form."""
    return any(isinstance(m, EXPLICIT_BLOCKS) for m in model.modules())


def convert_in_place(model: nn.Module) -> Edits:
    """Replace every ViT block of ``model`` by its explicit form; the returned edits undo it."""
    edits = Edits()
    try:
        for name, module in list(model.named_modules()):
            if _is_timm(module):
                _convert_timm_top(module, edits)
            for child_name, child in list(module.named_children()):
                where = f"{name}.{child_name}" if name else child_name
                if isinstance(child, EncoderBlock):
                    edits.replace(module, child_name, _explicit_torchvision_block(child, where))
                elif _is_timm(child) and isinstance(child, _timm_block_types()):
                    if type(child) is not _timm_block_types()[0]:
                        raise UnsupportedArchitectureError(
                            f"{where}: timm {type(child).__name__} is not supported"
                        )
                    edits.replace(module, child_name, _explicit_timm_block(child, where))
    except Exception:
        edits.revert()
        raise
    if not is_explicit(model):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no torchvision EncoderBlock or timm Block to make explicit"
        )
    return edits


def prepare_vit(model: nn.Module) -> nn.Module:
    """The explicit-attention form of ``model``, converted in place (pass a copy; prepare_model does).

    ConvNeXt / Swin / EVA models (:mod:`pxp.components.vit.mlp`) are pruned by MLP neurons
    only and are not converted; only their fused GluMlps are split.
    """
    from pxp.components.vit.mlp import is_mlp_model, prepare_mlp_model

    if not is_explicit(model):
        if is_mlp_model(model):
            return prepare_mlp_model(model)
        convert_in_place(model)
    return model


class ViTCanonizer(Canonizer):
    """zennit canonizer: explicit attention while registered, the original modules after ``remove``."""

    def __init__(self) -> None:
        super().__init__()
        self._edits: Edits | None = None
        self._module: nn.Module | None = None

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        if is_explicit(root_module):
            return []
        instance = self.copy()
        instance.register(root_module)
        return [instance]

    def register(self, module: nn.Module) -> None:
        self._module = module
        self._edits = convert_in_place(module)

    def remove(self) -> None:
        if self._edits is not None:
            self._edits.revert()
        self._edits = None
        self._module = None
