"""Structural removal of the deployed CNN families (random weights, small inputs).

For each family: find the prunable filters, rank them as coupled groups (what
``pxp compress`` does), remove 30 %, and check that the removed model is smaller
(params and MACs, as the cost model predicts), computes what the masked model
computes, and exports and reloads from JSON + safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pxp.components import find_layers, prepare_model
from pxp.models import get_architecture
from pxp.models.compressed import load_compressed
from pxp.pruning.cost import count_cost, removed_fractions
from pxp.pruning.coupling import component_graph, rank_with_cost
from pxp.pruning.export import export_compressed
from pxp.pruning.masking import masked
from pxp.pruning.removal import removal_planner, remove_pruned
from tests.pxp.pruning.test_removal_cnn import randomize

#: (registry architecture, kwargs, input size)
FAMILIES: list[tuple[str, dict[str, Any], int]] = [
    # Depthwise-separable, inverted residuals, squeeze-excitation (Hardswish / SiLU).
    ("mobilenet_v3_small", {}, 32),
    ("efficientnet_b0", {}, 32),
    # Grouped (non-depthwise) 3×3 convs: RegNet group widths, and a tiny ResNeXt (4 groups of 8).
    ("regnet_x_400mf", {}, 32),
    ("ResNet", {"block": "bottleneck", "layers": [1, 1, 1, 1], "groups": 4, "width_per_group": 8}, 32),
]


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    model = get_architecture(name).builder(**{**kwargs, "num_classes": 10})
    return randomize(model, seed=1)


@pytest.mark.parametrize(("name", "kwargs", "size"), FAMILIES, ids=[f[0] for f in FAMILIES[:3]] + ["resnext"])
def test_coupled_ranking_removes_what_it_prunes(
    name: str, kwargs: dict[str, Any], size: int, tmp_path: Path
) -> None:
    prepared = prepare_model(_build(name, kwargs), "cnn")
    layers = find_layers(prepared, "cnn")
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    graph = component_graph(prepared, "cnn", layers, x[:1])
    g = torch.Generator().manual_seed(2)
    scores = {layer.name: torch.rand(layer.size, generator=g) for layer in layers}
    keep = rank_with_cost(layers, scores, graph, coupled=True).keep_masks(0.3)
    pruned = sum(int((~mask).sum()) for mask in keep.values())

    planner = removal_planner(prepared, "cnn", layers, x[:1])
    result = remove_pruned(prepared, "cnn", layers, keep, x, planner=planner)
    # Coupled groups are pruned whole, so at most the group split by the rate boundary stays zeroed.
    assert result.removed_components > 0.95 * pruned
    with masked(prepared, layers, keep), torch.no_grad():
        want = prepared(x)
    with torch.no_grad():
        got = result.model(x)
    assert float(want.abs().max()) > 1e-3  # the check below is not vacuous
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

    shape = (3, size, size)
    measured = removed_fractions(count_cost(prepared, shape), count_cost(result.model, shape))
    macs, params = graph.removed_fractions(keep)
    assert measured["flops_removed_fraction"] > 0.2 and measured["params_removed_fraction"] > 0.2
    assert macs == pytest.approx(measured["flops_removed_fraction"], abs=1e-9)
    assert params == pytest.approx(measured["params_removed_fraction"], abs=1e-9)

    export_compressed(
        tmp_path,
        result,
        x,
        architecture=name,
        family="cnn",
        kwargs={**kwargs, "num_classes": 10},
        class_names=[str(i) for i in range(10)],
    )
    reloaded = load_compressed(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(x), got)


def test_grouped_conv_channels_go_a_whole_stripe_at_a_time() -> None:
    """ResNeXt conv1 → grouped conv2 (4 groups of 8): channel j goes with j+8, j+16, j+24, or stays zeroed."""
    prepared = prepare_model(_build("ResNet", FAMILIES[3][1]), "cnn")
    layers = find_layers(prepared, "cnn")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    planner = removal_planner(prepared, "cnn", layers, x[:1])
    keep = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in layers}
    keep["layer1.0.bn1"][[0, 8, 16]] = False
    partial = remove_pruned(prepared, "cnn", layers, keep, x, planner=planner)
    assert partial.plan.removed["layer1.0.bn1"] == [] and partial.plan.zeroed["layer1.0.bn1"] == [0, 8, 16]
    assert partial.model.get_submodule("layer1.0.conv2").in_channels == 32

    keep["layer1.0.bn1"][24] = False
    whole = remove_pruned(prepared, "cnn", layers, keep, x, planner=planner)
    assert whole.plan.removed["layer1.0.bn1"] == [0, 8, 16, 24] and whole.plan.zeroed["layer1.0.bn1"] == []
    conv2 = whole.model.get_submodule("layer1.0.conv2")
    assert isinstance(conv2, nn.Conv2d)
    assert (conv2.in_channels, conv2.groups, tuple(conv2.weight.shape)) == (28, 4, (32, 7, 3, 3))


def test_depthwise_conv_cut_to_one_channel_exports_and_reloads(tmp_path: Path) -> None:
    """A depthwise conv left with one channel (groups = 1) still reloads as the depthwise conv it was."""
    prepared = prepare_model(_build("mobilenet_v3_small", {}), "cnn")
    layers = find_layers(prepared, "cnn")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    keep = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in layers}
    for name in ("features.0.1", "features.1.block.0.1"):  # the stem and the depthwise conv it feeds
        keep[name][1:] = False
    result = remove_pruned(prepared, "cnn", layers, keep, x)
    assert result.plan.removed["features.1.block.0.1"] == list(range(1, 16))
    export_compressed(
        tmp_path,
        result,
        x,
        architecture="mobilenet_v3_small",
        family="cnn",
        kwargs={"num_classes": 10},
        class_names=[],
    )
    reloaded = load_compressed(tmp_path)
    assert reloaded.get_submodule("features.1.block.0.0").weight.shape == (1, 1, 3, 3)
    with torch.no_grad():
        assert torch.equal(reloaded(x), result.model(x))


def test_channel_rounding_counts_grouped_conv_stripes() -> None:
    """With ``round_to``, a grouped conv keeps a multiple of it per conv group (or the whole group width)."""
    prepared = prepare_model(_build("ResNet", FAMILIES[3][1]), "cnn")
    layers = find_layers(prepared, "cnn")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    graph = component_graph(prepared, "cnn", layers, x[:1])
    g = torch.Generator().manual_seed(3)
    scores = {layer.name: torch.rand(layer.size, generator=g) for layer in layers}
    keep = rank_with_cost(layers, scores, graph, coupled=True, round_to=5).keep_masks(0.5)
    result = remove_pruned(prepared, "cnn", layers, keep, x)
    before = {n: m for n, m in prepared.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    after = {n: result.model.get_submodule(n) for n in before}
    # Group widths 8 / 16 / 32 / 64 are not multiples of 5 (nor is 4 × them), so counting root
    # channels instead of stripes would leave other widths.
    for n, m in after.items():
        full = before[n].in_channels // before[n].groups, before[n].out_channels // before[n].groups
        kept = m.in_channels // m.groups, m.out_channels // m.groups
        assert all(k % 5 == 0 or k == f for k, f in zip(kept, full, strict=True)), (n, kept, full)
    assert any(after[n].weight.numel() < before[n].weight.numel() for n in before)  # some groups narrowed
