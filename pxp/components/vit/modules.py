"""Explicit building blocks of a Vision Transformer, one module per operation LRP needs to see.

Fused attention (``nn.MultiheadAttention``, timm's ``qkv`` + ``scaled_dot_product_attention``)
hides the operations that AttnLRP treats differently: the q/k/v projections, the
bilinear ``Q·Kᵀ`` and ``A·V`` products, the softmax and the residual sums. Here
each is its own module, so a zennit composite can attach a rule to it, and
:class:`HeadOutputs` exposes the per-head context ``(B, T, H, D)`` as a hook
point for attribution and masking.
"""

from __future__ import annotations

import torch
from torch import nn
from zennit.layer import Sum


class QueryKeyScores(nn.Module):
    """Attention logits ``scale · Q Kᵀ``: ``(B, H, T, D), (B, H, S, D) -> (B, H, T, S)``.

    The scale lives inside the bilinear product, so relevance is not rescaled by
    a separate unhooked multiplication.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return torch.matmul(query * self.scale, key.transpose(-2, -1))

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


class AttentionSoftmax(nn.Module):
    """Softmax over keys (last dimension)."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=-1)


class AttentionValues(nn.Module):
    """Per-head context ``A·V``: ``(B, H, T, S), (B, H, S, D) -> (B, H, T, D)``."""

    def forward(self, attention: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return torch.matmul(attention, value)


class HeadOutputs(nn.Module):
    """Identity on the per-head context ``(B, T, H, D)``, before heads are merged for the out projection.

    It is the hook point of the ``heads`` components: multiplying its output by a
    0/1 mask over dim 2 removes a head's whole contribution (the out projection's
    bias is kept), and the relevance read here is the relevance of each head's output.
    """

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return context


class ResidualSum(Sum):
    """``x + y`` as a zennit ``Sum`` over the stacked operands, so the Norm rule can split relevance."""

    def __init__(self) -> None:
        super().__init__(dim=-1)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self(torch.stack([x, y], dim=-1))


class StackedMean(nn.Module):
    """Mean over ``dim`` (token pooling, averaged classifier heads); relevance split by the Norm rule."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ExplicitSelfAttention(nn.Module):
    """Multi-head self-attention with every operation as its own module.

    ``q_proj``/``k_proj``/``v_proj`` are the rows of the original fused input projection
    (head ``h`` owns rows ``h·D … (h+1)·D − 1`` of each), ``out_proj`` is the
    original output projection.
    """

    def __init__(
        self,
        q_proj: nn.Linear,
        k_proj: nn.Linear,
        v_proj: nn.Linear,
        out_proj: nn.Linear,
        num_heads: int,
        scale: float,
        attn_drop: nn.Module | None = None,
        proj_drop: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if q_proj.out_features % num_heads:
            raise ValueError(f"{q_proj.out_features} attention features do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = q_proj.out_features // num_heads
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.scores = QueryKeyScores(scale)
        self.softmax = AttentionSoftmax()
        self.attn_drop = attn_drop if attn_drop is not None else nn.Identity()
        self.context = AttentionValues()
        self.heads = HeadOutputs()
        self.out_proj = out_proj
        self.proj_drop = proj_drop if proj_drop is not None else nn.Identity()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        query, key, value = (
            self._split(self.q_proj(x)),
            self._split(self.k_proj(x)),
            self._split(self.v_proj(x)),
        )
        attention = self.attn_drop(self.softmax(self.scores(query, key)))
        context = self.heads(self.context(attention, value).transpose(1, 2))
        return self.proj_drop(self.out_proj(context.reshape(batch, tokens, self.num_heads * self.head_dim)))


class ExplicitEncoderBlock(nn.Module):
    """torchvision ``EncoderBlock`` with explicit attention and residual sums; submodule names kept."""

    def __init__(
        self,
        ln_1: nn.Module,
        self_attention: ExplicitSelfAttention,
        dropout: nn.Module,
        ln_2: nn.Module,
        mlp: nn.Module,
    ) -> None:
        super().__init__()
        self.ln_1 = ln_1
        self.self_attention = self_attention
        self.dropout = dropout
        self.attn_residual = ResidualSum()
        self.ln_2 = ln_2
        self.mlp = mlp
        self.mlp_residual = ResidualSum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_residual.add(x, self.dropout(self.self_attention(self.ln_1(x))))
        return self.mlp_residual.add(x, self.mlp(self.ln_2(x)))


class ExplicitTimmBlock(nn.Module):
    """timm ``Block`` (pre-norm, optional LayerScale) with explicit attention and residual sums."""

    def __init__(
        self,
        norm1: nn.Module,
        attn: ExplicitSelfAttention,
        ls1: nn.Module,
        drop_path1: nn.Module,
        norm2: nn.Module,
        mlp: nn.Module,
        ls2: nn.Module,
        drop_path2: nn.Module,
    ) -> None:
        super().__init__()
        self.norm1 = norm1
        self.attn = attn
        self.ls1 = ls1
        self.drop_path1 = drop_path1
        self.attn_residual = ResidualSum()
        self.norm2 = norm2
        self.mlp = mlp
        self.ls2 = ls2
        self.drop_path2 = drop_path2
        self.mlp_residual = ResidualSum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_residual.add(x, self.drop_path1(self.ls1(self.attn(self.norm1(x)))))
        return self.mlp_residual.add(x, self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))


ExplicitBlock = ExplicitEncoderBlock | ExplicitTimmBlock
EXPLICIT_BLOCKS: tuple[type[nn.Module], ...] = (ExplicitEncoderBlock, ExplicitTimmBlock)
