"""Batched collection of activations and backward signals at hook points.

Every attribution criterion that needs a backward pass goes through
:func:`collect`: one forward and one backward per batch, starting from a
one-hot 1 at each sample's ground-truth class (samples are independent in
eval mode, so a batch gives exactly the per-sample signals, only faster than
the reference code's one-sample loop). With an LRP composite active, the
gradient arriving at a hook point's output *is* the relevance there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn

from pxp.components.base import PrunableLayer, aggregate

Signal = Literal["grad", "act_x_grad", "relevance"]


@contextlib.contextmanager
def capture_outputs(model: nn.Module, layers: list[PrunableLayer]) -> Iterator[dict[str, torch.Tensor]]:
    """Record each hook point's forward output (with its grad retained) during the block.

    The hook hands a clone downstream, so in-place ops after the hook point
    (torchvision ResNet's ``out += identity``) cannot overwrite what was recorded.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if output.requires_grad:
                output.retain_grad()  # for callers that run their own backward inside the block
            store[name] = output
            return output.clone()

        return hook

    try:
        for layer in layers:
            handles.append(model.get_submodule(layer.name).register_forward_hook(make_hook(layer.name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _one_hot(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def backward_signals(
    model: nn.Module, layers: list[PrunableLayer], x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Activations and gradients (relevances, under a composite) at every hook point for one batch.

    The backward asks autograd for the gradients at the hook points only
    (``torch.autograd.grad``), not for ``.grad`` of every leaf: no weight gradients
    are computed (every conv's backward would otherwise also compute its weight
    gradient) and nothing below the first hook point runs. The gradients at the hook
    points are the same tensors, bitwise, as ``backward()`` leaves in their ``.grad``;
    the model's parameters get no ``.grad``.
    """
    x = x.detach().requires_grad_(True)
    with capture_outputs(model, layers) as store:
        logits = model(x)
        names = [name for name, t in store.items() if t.requires_grad]
        found = (
            torch.autograd.grad(
                logits, [store[name] for name in names], grad_outputs=_one_hot(logits, y), allow_unused=True
            )
            if names
            else ()
        )
    acts = {name: t.detach() for name, t in store.items()}
    received = dict(zip(names, found, strict=True))
    grads = {}
    for name, t in store.items():
        grad = received.get(name)
        grads[name] = grad.detach() if grad is not None else torch.zeros_like(t)
    return acts, grads


def collect(
    model: nn.Module,
    layers: list[PrunableLayer],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    signal: Signal,
    batch_size: int = 32,
    signed: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-component scores summed over all samples, batch by batch."""
    totals = {layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
    for part in batches(len(x), batch_size):
        acts, grads = backward_signals(model, layers, x[part], y[part])
        for layer in layers:
            value = grads[layer.name]
            if signal == "act_x_grad":
                value = acts[layer.name] * value
            totals[layer.name] += aggregate(value, layer.channel_dim, signed=signed).cpu()
    return totals


def collect_integrated_gradients(
    model: nn.Module,
    layers: list[PrunableLayer],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 20,
    batch_size: int = 32,
    signed: bool = False,
) -> dict[str, torch.Tensor]:
    """Layer integrated gradients from a zero input baseline.

    (a(x) − a(0)) × mean of ∂y/∂a along the straight input path, midpoint
    Riemann sum with ``steps`` points; completeness holds up to the sum's error.
    """
    totals = {layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
    alphas = [(k + 0.5) / steps for k in range(steps)]
    for part in batches(len(x), batch_size):
        xb, yb = x[part], y[part]
        with torch.no_grad(), capture_outputs(model, layers) as store:
            model(xb)
            act_full = {name: t.detach() for name, t in store.items()}
            model(torch.zeros_like(xb))
            act_base = {name: t.detach() for name, t in store.items()}
        mean_grad: dict[str, torch.Tensor] = {}
        for alpha in alphas:
            _, grads = backward_signals(model, layers, xb * alpha, yb)
            for name, g in grads.items():
                mean_grad[name] = mean_grad.get(name, 0) + g / steps
        for layer in layers:
            value = (act_full[layer.name] - act_base[layer.name]) * mean_grad[layer.name]
            totals[layer.name] += aggregate(value, layer.channel_dim, signed=signed).cpu()
    return totals
