"""The batched backward: the signals at the hook points, and nothing the scores do not need."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pxp.attribution.engine import _one_hot, backward_signals, capture_outputs
from pxp.attribution.lrp import build_composite
from pxp.components import PrunableLayer, find_layers, prepare_model
from pxp.spec import CompositeSpec, RuleSpec

#: Rules whose backward differs from the plain gradient in every way zennit has (modified
#: parameters, several modified forwards, stabilised outputs), on a residual network.
MIXED = CompositeSpec(
    rules={
        "low": RuleSpec(name="gamma", param=0.25),
        "mid": RuleSpec(name="zplus"),
        "high": RuleSpec(name="epsilon", param=0.25),
        "fc": RuleSpec(name="alpha_beta", param=2.0),
    }
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return prepare_model(model, "cnn")


def _reference(
    model: nn.Module, layers: list[PrunableLayer], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """What the engine computed before: ``backward()`` and the retained ``.grad`` of each hook output."""
    x = x.detach().requires_grad_(True)
    with capture_outputs(model, layers) as store:
        logits = model(x)
        logits.backward(gradient=_one_hot(logits, y))
    return {name: t.grad.detach() for name, t in store.items() if t.grad is not None}


@pytest.mark.parametrize("composite", [None, MIXED, CompositeSpec()], ids=["gradient", "mixed", "epsilon"])
def test_signals_equal_a_full_backward_bitwise_and_leave_no_parameter_gradients(
    composite: CompositeSpec | None,
) -> None:
    model = _model()
    layers = find_layers(model, "cnn")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([3, 7])
    if composite is None:
        expected = _reference(model, layers, x, y)
        for p in model.parameters():
            p.grad = None
        _, got = backward_signals(model, layers, x, y)
        params = list(model.parameters())
    else:
        with build_composite(model, "cnn", composite).context(model) as canonized:
            expected = _reference(canonized, layers, x, y)
            for p in canonized.parameters():
                p.grad = None
            _, got = backward_signals(canonized, layers, x, y)
            params = list(canonized.parameters())
    assert set(got) == {layer.name for layer in layers}
    for layer in layers:
        assert torch.equal(got[layer.name], expected[layer.name]), layer.name
    # No weight gradient was computed: the backward ran only towards the hook points.
    assert all(p.grad is None for p in params)
