from __future__ import annotations

import torch
import torchvision
from torch import nn

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.pruning.masking import masked, zero_pruned_cnn_weights
from pxp.pruning.ranking import rank
from pxp.spec import CRITERIA, AttributionSpec


def _prepared(factory) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = factory(num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.uniform_(-0.5, 0.5)
    prepared = prepare_model(model, "cnn")
    return prepared, find_layers(prepared, "cnn")


def test_masked_filters_are_dead_downstream() -> None:
    """Perturbing the producing weights of a masked filter (conv and BN) changes nothing."""
    prepared, layers = _prepared(torchvision.models.resnet18)
    x = torch.randn(2, 3, 32, 32)
    scores = {layer.name: torch.rand(layer.size) for layer in layers}
    keep = rank(layers, scores).keep_masks(0.5)
    with torch.no_grad(), masked(prepared, layers, keep):
        before = prepared(x)
        for layer in layers:
            dead = ~keep[layer.name]
            conv = prepared.get_submodule(layer.producer)
            conv.weight[dead] += torch.randn_like(conv.weight[dead])
            if layer.name != layer.producer:
                prepared.get_submodule(layer.name).bias[dead] += 1.0
        after = prepared(x)
    torch.testing.assert_close(after, before)


def test_masking_hooks_are_removed() -> None:
    prepared, layers = _prepared(torchvision.models.vgg11_bn)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = prepared(x)
        keep = {layer.name: torch.zeros(layer.size, dtype=torch.bool) for layer in layers}
        with masked(prepared, layers, keep):
            pass
        assert all(not m._forward_hooks for m in prepared.modules())
        torch.testing.assert_close(prepared(x), reference)


def test_zeroed_weights_equal_masking_with_bn() -> None:
    prepared, layers = _prepared(torchvision.models.vgg11_bn)
    x = torch.randn(2, 3, 32, 32)
    keep = rank(layers, {layer.name: torch.rand(layer.size) for layer in layers}).keep_masks(0.4)
    with torch.no_grad(), masked(prepared, layers, keep):
        expected = prepared(x)
    zero_pruned_cnn_weights(prepared, layers, keep)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), expected)


def test_every_criterion_scores_every_prunable_layer() -> None:
    prepared, layers = _prepared(torchvision.models.resnet18)
    ctx = ScoringContext(prepared, "cnn", layers, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    for criterion in CRITERIA:
        scores = compute_scores(ctx, AttributionSpec(criterion=criterion, ig_steps=4))
        assert set(scores) == {layer.name for layer in layers}, criterion
        for layer in layers:
            assert scores[layer.name].shape == (layer.size,), (criterion, layer.name)
            assert torch.isfinite(scores[layer.name]).all(), (criterion, layer.name)
        if criterion != "random":
            assert any(bool(scores[layer.name].abs().sum() > 0) for layer in layers), criterion


def test_random_baseline_covers_all_layers_and_is_seeded() -> None:
    prepared, layers = _prepared(torchvision.models.vgg11_bn)
    ctx = ScoringContext(prepared, "cnn", layers, torch.randn(1, 3, 32, 32), torch.tensor([0]))
    a = compute_scores(ctx, AttributionSpec(criterion="random", seed=3))
    b = compute_scores(ctx, AttributionSpec(criterion="random", seed=3))
    c = compute_scores(ctx, AttributionSpec(criterion="random", seed=4))
    keep = rank(layers, a).keep_masks(0.5)
    assert all(not m.all() for m in keep.values()), "random pruning must touch every layer"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
