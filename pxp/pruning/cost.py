"""Parameters and multiply-accumulates (MACs) of a model for one input size.

MACs count what dominates inference: convolutions, linear layers and the two
attention matmuls (q·kᵀ and attention·v). Normalisation, activations, pooling
and softmax are left out, as is usual for "FLOPs" tables; that makes the
FLOPs-ideal speed-up a slight overestimate for models rich in elementwise work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pxp.components.vit.modules import AttentionValues, QueryKeyScores
from pxp.models.compressed import PrunedMultiheadAttention


@dataclass(frozen=True)
class Cost:
    #: Multiply-accumulates for one sample.
    macs: int
    params: int


def _attention_macs(batch_tokens: int, tokens: int, inner: int) -> int:
    return 2 * batch_tokens * tokens * inner


def _hook_macs(module: nn.Module, inputs: tuple, output: object) -> int:
    if isinstance(module, nn.Conv2d):
        assert isinstance(output, torch.Tensor)
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        assert isinstance(output, torch.Tensor)
        return output.numel() * module.in_features
    if isinstance(module, nn.MultiheadAttention):
        query = inputs[0]
        b, n, e = query.shape if module.batch_first else (query.shape[1], query.shape[0], query.shape[2])
        # in_proj and out_proj run as functional calls, so no Linear hook sees them.
        return b * n * e * 3 * e + _attention_macs(b * n, n, e) + b * n * e * e
    if isinstance(module, PrunedMultiheadAttention):
        b, n, e = inputs[0].shape
        inner = module.num_heads * module.head_dim
        return b * n * e * 3 * inner + _attention_macs(b * n, n, inner)
    if isinstance(module, QueryKeyScores):
        assert isinstance(output, torch.Tensor)
        return output.numel() * inputs[0].shape[-1]
    if isinstance(module, AttentionValues):
        assert isinstance(output, torch.Tensor)
        return output.numel() * inputs[0].shape[-1]
    if type(module).__name__ == "Attention" and hasattr(module, "qkv") and hasattr(module, "attn_dim"):
        b, n, _ = inputs[0].shape
        attn_dim: Any = module.attn_dim
        return _attention_macs(b * n, n, int(attn_dim))
    return 0


@torch.no_grad()
def count_cost(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    """MACs per sample and parameter count of ``model`` for inputs of ``input_shape`` (without batch dim)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal total
        total += _hook_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return Cost(macs=int(total), params=int(params))


def removed_fractions(before: Cost, after: Cost) -> dict[str, float]:
    """``params_removed_fraction`` / ``flops_removed_fraction`` as the pipeline reports them."""
    return {
        "params_removed_fraction": 1.0 - after.params / max(before.params, 1),
        "flops_removed_fraction": 1.0 - after.macs / max(before.macs, 1),
    }
