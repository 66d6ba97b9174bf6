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
    ("mobilenet_v3_small", {}, 32),
    ("efficientnet_b0", {}, 32),
]


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    model = get_architecture(name).builder(**{**kwargs, "num_classes": 10})
    return randomize(model, seed=1)


@pytest.mark.parametrize(("name", "kwargs", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
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
