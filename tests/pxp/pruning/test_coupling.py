"""Coupled groups and component costs: ranking, removal and the cost model against the removed model."""

from __future__ import annotations

import pytest
import torch

from pxp.components import find_layers, prepare_model
from pxp.models.digits import digits_resnet18, digits_vgg
from pxp.pruning.cost import count_cost, removed_fractions
from pxp.pruning.coupling import component_graph, rank_with_cost
from pxp.pruning.ranking import rank
from pxp.pruning.removal import remove_pruned
from tests.pxp.pruning.test_removal_cnn import randomize


def _model(arch: str, base_width: int = 4):
    if arch == "vgg":
        model = digits_vgg(widths=(8, 16, 16), convs_per_stage=1, hidden=24)
    else:
        model = digits_resnet18(base_width=base_width, layers=(1, 1, 1, 1))
    prepared = prepare_model(randomize(model, seed=4), "cnn")
    layers = find_layers(prepared, "cnn", "filters")
    x = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    scores = {layer.name: torch.rand(layer.size, generator=g) for layer in layers}
    return prepared, layers, x, scores


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_uncoupled_cost_free_ranking_is_the_papers(arch: str) -> None:
    prepared, layers, x, scores = _model(arch)
    graph = component_graph(prepared, "cnn", layers, x)
    assert sorted(c for g in graph.groups for c in g) == sorted(
        (layer.name, i) for layer in layers for i in range(layer.size)
    )
    assert rank_with_cost(layers, scores, graph, coupled=False) == rank(layers, scores)


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
@pytest.mark.parametrize("coupled", [False, True])
def test_cost_model_predicts_the_removed_models_macs_and_params(arch: str, coupled: bool) -> None:
    prepared, layers, x, scores = _model(arch)
    graph = component_graph(prepared, "cnn", layers, x)
    order = rank_with_cost(layers, scores, graph, coupled=coupled, cost_exponent=0.5)
    keep = order.keep_masks(0.5)
    removal = remove_pruned(prepared, "cnn", layers, keep, x)
    measured = removed_fractions(count_cost(prepared, (1, 32, 32)), count_cost(removal.model, (1, 32, 32)))
    macs, params = graph.removed_fractions(keep)
    assert macs == pytest.approx(measured["flops_removed_fraction"], abs=1e-9)
    # BN running statistics are buffers, not parameters; the model's params are matched to within BN biases' share.
    assert params == pytest.approx(measured["params_removed_fraction"], abs=1e-9)


def test_coupled_ranking_removes_residual_channels_instead_of_zeroing_them() -> None:
    prepared, layers, x, scores = _model("resnet")
    graph = component_graph(prepared, "cnn", layers, x)
    assert max(len(g) for g in graph.groups) > 1  # a ResNet has residual streams
    largest = max(len(g) for g in graph.groups)
    plain = remove_pruned(prepared, "cnn", layers, rank(layers, scores).keep_masks(0.5), x)
    order = rank_with_cost(layers, scores, graph, coupled=True)
    coupled = remove_pruned(prepared, "cnn", layers, order.keep_masks(0.5), x)
    assert plain.zeroed_components > largest
    # Only the one group a rate boundary may split can be zeroed rather than removed.
    assert coupled.zeroed_components < largest
    assert coupled.params_after < plain.params_after


def test_cost_exponent_prunes_expensive_components_first_among_equals() -> None:
    prepared, layers, x, _ = _model("vgg")
    graph = component_graph(prepared, "cnn", layers, x)
    equal = {layer.name: torch.ones(layer.size) for layer in layers}
    order = rank_with_cost(layers, equal, graph, coupled=False, cost_exponent=1.0)
    cost = {g[0]: m for g, m in zip(graph.groups, graph.group_macs, strict=True)}
    first = [cost[c] for c in order.order[:5]]
    assert first == sorted(first, reverse=True) and first[0] == max(cost.values())


def test_coupled_rounding_keeps_a_multiple_of_every_removed_dimension() -> None:
    """With coupling, a residual stream is one dimension: the removed model's every conv width is a multiple."""
    prepared, layers, x, scores = _model("resnet", base_width=8)
    graph = component_graph(prepared, "cnn", layers, x)
    order = rank_with_cost(layers, scores, graph, coupled=True, cost_exponent=1.0, round_to=4)
    for rate in (0.2, 0.4, 0.6):
        removal = remove_pruned(prepared, "cnn", layers, order.keep_masks(rate), x)
        assert removal.zeroed_components == 0  # a group cut by the rate boundary is not pruned at all
        widths = [m.out_channels for m in removal.model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(w % 4 == 0 for w in widths), widths
        assert removal.params_after < sum(p.numel() for p in prepared.parameters())
