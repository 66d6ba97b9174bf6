from __future__ import annotations

import pytest
import torch

from pxp.components import PrunableLayer
from pxp.errors import InvalidSpecError
from pxp.pruning.ranking import rank


def _layers(*sizes: int) -> list[PrunableLayer]:
    return [
        PrunableLayer(
            name=f"l{i}", kind="filters", size=s, channel_dim=1, producer=f"l{i}", group="low", index=i
        )
        for i, s in enumerate(sizes)
    ]


def _scores(layers: list[PrunableLayer], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {layer.name: torch.rand(layer.size, generator=gen, dtype=torch.float64) for layer in layers}


def test_masks_are_nested_across_rates() -> None:
    layers = _layers(8, 16, 32)
    order = rank(layers, _scores(layers))
    previous = None
    for rate in [0.0, 0.1, 0.25, 0.5, 0.75, 0.95]:
        keep = order.keep_masks(rate)
        if previous is not None:
            for name in keep:
                assert not (keep[name] & ~previous[name]).any(), "a component pruned earlier came back"
        previous = keep


def test_ranking_is_global_and_ascending() -> None:
    layers = _layers(4, 4)
    scores = {"l0": torch.tensor([0.1, 5.0, 6.0, 7.0]), "l1": torch.tensor([0.2, 0.3, 8.0, 9.0])}
    order = rank(layers, scores, min_keep=1)
    assert order.order[:3] == (("l0", 0), ("l1", 0), ("l1", 1))
    keep = order.keep_masks(0.25)
    assert keep["l0"].tolist() == [False, True, True, True]
    assert keep["l1"].tolist() == [False, True, True, True]


@pytest.mark.parametrize("min_keep", [1, 3])
def test_min_keep_holds_at_every_rate(min_keep: int) -> None:
    layers = _layers(4, 16, 64)
    scores = _scores(layers)
    scores["l0"] *= 1e-6
    order = rank(layers, scores, min_keep=min_keep)
    for rate in [0.5, 0.9, 0.99]:
        keep = order.keep_masks(rate)
        assert all(int(m.sum()) >= min_keep for m in keep.values())


def test_per_layer_normalisation_lets_wide_layers_compete() -> None:
    layers = _layers(2, 100)
    scores = {"l0": torch.tensor([0.5, 0.6]), "l1": torch.full((100,), 1.0)}
    plain = rank(layers, scores)
    normalised = rank(layers, scores, normalize_per_layer=True)
    assert plain.order[0] == ("l0", 0)
    assert normalised.order[0][0] == "l1"


def test_bad_scores_and_min_keep_are_rejected() -> None:
    layers = _layers(4)
    with pytest.raises(InvalidSpecError):
        rank(layers, {"l0": torch.ones(3)})
    with pytest.raises(InvalidSpecError):
        rank(layers, {"l0": torch.ones(4)}, min_keep=5)


@pytest.mark.parametrize("block", [4, 8])
def test_channel_rounding_keeps_a_multiple_per_layer_and_stays_nested(block: int) -> None:
    layers = _layers(8, 16, 32, 12)
    order = rank(layers, _scores(layers), round_to=block)
    plain = rank(layers, _scores(layers))
    previous = None
    for rate in [0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9]:
        keep = order.keep_masks(rate)
        loose = plain.keep_masks(rate)
        for layer in layers:
            kept = int(keep[layer.name].sum())
            assert kept == layer.size or kept % block == 0, (layer.name, kept)
            # Rounding only ever keeps more, and what it prunes the plain order prunes too.
            assert not (~keep[layer.name] & loose[layer.name]).any()
        if previous is not None:
            for name in keep:
                assert not (keep[name] & ~previous[name]).any(), "a component pruned earlier came back"
        previous = keep
        pruned = sum(int((~m).sum()) for m in keep.values())
        assert order.achieved_rate(rate) == pruned / order.total
    assert order.achieved_rate(0.9) > 0.5  # rounding still prunes


def test_channel_rounding_prunes_the_least_relevant_of_each_layer() -> None:
    layers = _layers(16)
    scores = {"l0": torch.arange(16, dtype=torch.float64)}
    order = rank(layers, scores, round_to=4)
    keep = order.keep_masks(6 / 16)  # 6 in the prefix: 4 pruned, 12 kept
    assert keep["l0"].tolist() == [False] * 4 + [True] * 12
    assert order.keep_masks(3 / 16)["l0"].all()


def test_round_to_must_be_positive() -> None:
    layers = _layers(4)
    with pytest.raises(InvalidSpecError, match="round_to"):
        rank(layers, _scores(layers), round_to=0)
