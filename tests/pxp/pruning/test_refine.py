"""Safe-rate refinement: bisection over component counts between grid points."""

from __future__ import annotations

import torch

from pxp.components import PrunableLayer
from pxp.pruning.ranking import rank
from pxp.pruning.refine import refine_safe_rate


def _order(size: int = 100):
    layer = PrunableLayer(
        name="a", kind="filters", size=size, channel_dim=1, producer="a", group="low", index=0
    )
    return rank([layer], {"a": torch.arange(size, dtype=torch.float32)})


def test_bisection_finds_the_last_passing_count_between_grid_points() -> None:
    order = _order()
    # Accuracy falls off a cliff after 37 of 100 components are pruned.
    evaluate_calls: list[float] = []

    def evaluate(rate: float) -> float:
        evaluate_calls.append(rate)
        return 1.0 if order.count_for_rate(rate) <= 37 else 0.5

    rates = [0.0, 0.2, 0.4, 0.6]
    result = refine_safe_rate(order, rates, [1.0, 1.0, 0.5, 0.4], 0.2, 0.01, evaluate, max_steps=10)
    assert result.grid_safe_rate == 0.2
    assert result.refined_rate == 0.37
    assert [r for r, _ in result.evaluations] == evaluate_calls
    assert len(evaluate_calls) <= 5  # a 20-component bracket needs ceil(log2(20)) = 5 steps


def test_refinement_is_bounded_and_never_below_the_grid_safe_rate() -> None:
    order = _order()
    result = refine_safe_rate(order, [0.0, 0.5], [1.0, 0.0], 0.0, 0.01, lambda r: 0.0, max_steps=2)
    assert result.refined_rate == 0.0 and len(result.evaluations) == 2
    top = refine_safe_rate(order, [0.0, 0.5], [1.0, 1.0], 0.5, 0.01, lambda r: 1.0)
    assert top.refined_rate == 0.5 and top.evaluations == []
    off = refine_safe_rate(order, [0.0, 0.5], [1.0, 0.0], 0.0, 0.01, lambda r: 1.0, max_steps=0)
    assert off.refined_rate == 0.0 and off.evaluations == []
