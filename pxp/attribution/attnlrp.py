"""AttnLRP rules on zennit hooks, from the equations of Achtibat et al. (2024).

Under a zennit composite the "gradient" flowing between hooked modules *is* the
relevance, and each hook maps the relevance ``R`` at its module's output to the
relevance at its input(s). The rules here cover the operations of a transformer
that the linear-layer rules (ε, γ, α-β, z+) do not, plus a cheaper ε-rule for Linear layers:

- :class:`LayerNormRule`: LayerNorm with its standard deviation treated as a
  constant, which makes it the linear map ``x ↦ γ ⊙ (x − mean x) / σ + β``; the
  ε-rule on that map.
- :class:`BilinearRule`: a product of two inputs (``Q·Kᵀ``, ``A·V``). With the
  uniform split, each input receives half of the ε-rule relevance of the product,
  so relevance is conserved. With ``shares=(0, 1)`` the first input is a constant
  (CP-LRP: attention passes relevance only to the values).
- softmax rules: :class:`SoftmaxTaylorRule` (AttnLRP: ``R_in = x ⊙ (R − s Σ R)``,
  the bias-free Taylor decomposition at the input, which equals input × gradient),
  :class:`SoftmaxZPlusRule` (the z+ rule on the same Taylor contributions) and
  :class:`BlockRule` (no relevance, for CP-LRP).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from zennit.core import Hook, stabilize


class _StoringHook(Hook):
    """A hook that keeps its module's inputs and output for the backward rule."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__()
        self.stabilizer = stabilizer

    def forward(self, module: nn.Module, input: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.stored_tensors["input"] = tuple(t.detach() for t in input)
        self.stored_tensors["output"] = output.detach()

    def copy(self) -> Any:
        return type(self)(self.stabilizer)


class LinearEpsilon(_StoringHook):
    """zennit's ε-rule for ``nn.Linear``, computed from the stored output instead of a second forward.

    ``R_in = x ⊙ Wᵀ (R / (z + ε·sign z))`` with ``z`` the layer's output; identical to
    :class:`zennit.rules.Epsilon` without parameter modifiers, one matmul cheaper.
    """

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor]:
        assert isinstance(module, nn.Linear)
        (x,) = self.stored_tensors["input"]
        scaled = grad_output[0] / stabilize(self.stored_tensors["output"], self.stabilizer)
        return (x * torch.matmul(scaled, module.weight),)


class LayerNormRule(_StoringHook):
    """ε-rule on LayerNorm as a linear map, the standard deviation held constant (AttnLRP)."""

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor]:
        assert isinstance(module, nn.LayerNorm)
        (x,) = self.stored_tensors["input"]
        y = self.stored_tensors["output"]
        dims = tuple(range(-len(module.normalized_shape), 0))
        centred = x - x.mean(dim=dims, keepdim=True)
        std = (centred.pow(2).mean(dim=dims, keepdim=True) + module.eps).sqrt()
        scaled = grad_output[0] / stabilize(y, self.stabilizer)
        if module.weight is not None:
            scaled = scaled * module.weight
        # J^T u for J = diag(γ/σ) (I − 11ᵀ/n): centring is symmetric.
        grad = (scaled - scaled.mean(dim=dims, keepdim=True)) / std
        return (x * grad,)


class BilinearRule(_StoringHook):
    """ε-rule on a product of two inputs, relevance split between them by ``shares``.

    For ``out = f(a, b)`` bilinear, ``a ⊙ ∂out/∂a·g`` and ``b ⊙ ∂out/∂b·g`` with
    ``g = R / out`` each sum to the whole relevance (Euler's theorem on each
    factor), so shares summing to 1 conserve it: ``(½, ½)`` is AttnLRP's uniform
    rule, ``(0, 1)`` treats the first input as a constant.
    """

    def __init__(self, stabilizer: float = 1e-6, shares: tuple[float, float] = (0.5, 0.5)) -> None:
        super().__init__(stabilizer)
        self.shares = shares

    def copy(self) -> Any:
        return type(self)(self.stabilizer, self.shares)

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor, ...]:
        a, b = self.stored_tensors["input"]
        g = grad_output[0] / stabilize(self.stored_tensors["output"], self.stabilizer)
        with torch.enable_grad():
            a_, b_ = a.requires_grad_(), b.requires_grad_()
            ga, gb = torch.autograd.grad(module.forward(a_, b_), (a_, b_), g)
        share_a, share_b = self.shares
        rel_a = a * ga * share_a if share_a else torch.zeros_like(a)
        rel_b = b * gb * share_b if share_b else torch.zeros_like(b)
        return rel_a, rel_b


class SoftmaxTaylorRule(_StoringHook):
    """AttnLRP's softmax rule ``R_in = x ⊙ (R − s · Σ_keys R)``.

    This is ``x ⊙ Jᵀ(R / s)``: input times the softmax's true gradient. It is not
    conservative; the Taylor expansion's bias term absorbs the difference.
    """

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor]:
        (x,) = self.stored_tensors["input"]
        s = self.stored_tensors["output"]
        relevance = grad_output[0]
        return (x * (relevance - s * relevance.sum(dim=-1, keepdim=True)),)


class SoftmaxZPlusRule(_StoringHook):
    """z+ on the softmax's Taylor contributions (pxp's "attnlrp_zplus" variant).

    AttnLRP's rule distributes ``R_i`` over the inputs by the contributions
    ``z_ij = x_j ∂s_i/∂x_j = x_j s_i (δ_ij − s_j)`` without normalising them. Here,
    as in the z+ rule for linear layers, only positive contributions count and each
    output's relevance is normalised over them, ``R_j = Σ_i z_ij⁺ / Σ_j' z_ij'⁺ · R_i``,
    which conserves relevance (outputs with no positive contribution pass none).
    With ``p = max(x, 0)`` and ``n = max(−x, 0)``: ``z_ii⁺ = p_i s_i (1 − s_i)`` and,
    for ``i ≠ j``, ``z_ij⁺ = s_i s_j n_j``, so every sum has a closed form in O(keys).
    Like AttnLRP's rule, it depends on the offset of the logits, which the softmax ignores.
    """

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple[torch.Tensor]:
        (x,) = self.stored_tensors["input"]
        s = self.stored_tensors["output"]
        relevance = grad_output[0]
        pos, neg = x.clamp(min=0), (-x).clamp(min=0)
        self_term = pos * s * (1 - s)
        denominator = self_term + s * _sum_of_others(s * neg)
        # An output without positive contributions passes nothing (instead of dividing by ε).
        w = torch.where(denominator > 0, relevance / (denominator + self.stabilizer), 0.0)
        return (self_term * w + s * neg * _sum_of_others(s * w),)


def _sum_of_others(v: torch.Tensor) -> torch.Tensor:
    """``Σ_{i≠j} v_i`` along the last dim, from prefix and suffix sums.

    Subtracting ``v_j`` from the total would cancel catastrophically when ``v_j``
    dominates the row, turning an exact zero into a rounding error that a
    near-zero denominator then amplifies.
    """
    before = nn.functional.pad(torch.cumsum(v[..., :-1], dim=-1), (1, 0))
    after = nn.functional.pad(torch.cumsum(v.flip(-1)[..., :-1], dim=-1), (1, 0)).flip(-1)
    return before + after


class BlockRule(Hook):
    """Passes no relevance to the input (CP-LRP's softmax: the attention is a constant)."""

    def backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
        return tuple(torch.zeros_like(g) if g is not None else None for g in grad_input)
