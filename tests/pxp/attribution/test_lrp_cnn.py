"""LRP against its defining properties, on real torchvision architectures (random weights)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pxp.attribution import ScoringContext, compute_scores
from pxp.attribution.engine import backward_signals
from pxp.attribution.lrp import build_composite
from pxp.components import find_layers, prepare_model
from pxp.spec import CNN_GROUPS, AttributionSpec, CompositeSpec, RuleSpec

ALL_EPSILON = CompositeSpec(rules={g: RuleSpec(name="epsilon", param=1e-9) for g in CNN_GROUPS})


def _randomize_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
    return model


def _models() -> list[tuple[str, nn.Module]]:
    torch.manual_seed(0)
    return [
        ("resnet18", _randomize_bn(torchvision.models.resnet18(num_classes=10))),
        ("vgg11_bn", _randomize_bn(torchvision.models.vgg11_bn(num_classes=10))),
        ("vgg11", torchvision.models.vgg11(num_classes=10)),
    ]


@pytest.mark.parametrize(("name", "model"), _models(), ids=lambda v: v if isinstance(v, str) else "")
def test_all_epsilon_lrp_equals_gradient_times_input(name: str, model: nn.Module) -> None:
    """With ε→0 every rule is LRP-0, whose relevance is gradient×input per unit of output relevance."""
    model = model.double()
    prepared = prepare_model(model, "cnn")
    layers = find_layers(prepared, "cnn")
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 7])
    with torch.no_grad():
        target_logit = prepared(x).gather(1, y[:, None]).squeeze(1)
    acts, grads = backward_signals(prepared, layers, x, y)
    with build_composite(prepared, "cnn", ALL_EPSILON).context(prepared) as canonized:
        _, relevance = backward_signals(canonized, layers, x, y)
    for layer in layers:
        expected = acts[layer.name] * grads[layer.name] / target_logit.view(-1, 1, 1, 1)
        rel_err = (relevance[layer.name] - expected).norm() / expected.norm()
        assert rel_err < 1e-2, f"{name} {layer.name}: relative error {rel_err:.2e}"


def test_canonized_model_keeps_logits_and_is_restored() -> None:
    model = _randomize_bn(torchvision.models.resnet18(num_classes=10)).double().eval()
    prepared = prepare_model(model, "cnn")
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = prepared(x)
        with build_composite(prepared, "cnn", CompositeSpec()).context(prepared) as canonized:
            during = canonized(x)
        after = prepared(x)
        original = model(x)
    torch.testing.assert_close(during, before, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(original, before, rtol=0, atol=0)


class BiasFreeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 5, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_epsilon_relevance_is_conserved_without_biases() -> None:
    torch.manual_seed(0)
    model = BiasFreeNet().double().eval()
    prepared = prepare_model(model, "cnn")
    layers = find_layers(prepared, "cnn")
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    composite = CompositeSpec(rules={g: RuleSpec(name="epsilon", param=1e-6) for g in CNN_GROUPS})
    with build_composite(prepared, "cnn", composite).context(prepared) as canonized:
        _, relevance = backward_signals(canonized, layers, x, y)
    for layer in layers:
        per_sample = relevance[layer.name].sum(dim=(1, 2, 3))
        torch.testing.assert_close(per_sample, torch.ones(4, dtype=torch.float64), rtol=1e-2, atol=1e-2)


def test_batched_scores_equal_per_sample_scores() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()
    prepared = prepare_model(model, "cnn")
    layers = find_layers(prepared, "cnn")
    x = torch.randn(4, 3, 16, 16)
    y = torch.arange(4)
    ctx = ScoringContext(prepared, "cnn", layers, x, y)
    batched = compute_scores(ctx, AttributionSpec(criterion="lrp", batch_size=4))
    single = compute_scores(ctx, AttributionSpec(criterion="lrp", batch_size=1))
    for layer in layers:
        scale = float(single[layer.name].abs().max())
        torch.testing.assert_close(batched[layer.name], single[layer.name], rtol=1e-3, atol=1e-4 * scale)
