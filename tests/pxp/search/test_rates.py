from __future__ import annotations

import pytest

from pxp.search.rates import coarse_to_fine, estimated_apr
from pxp.spec import DEFAULT_RATES


@pytest.mark.parametrize("n", [2, 3, 5, 20, 33])
def test_coarse_to_fine_visits_every_rate_but_the_first_once(n: int) -> None:
    rates = [i / n for i in range(n)]
    order = coarse_to_fine(rates)
    assert sorted(order) == rates[1:]
    assert order[0] == rates[-1]


def test_coarse_to_fine_bisects_the_default_rates() -> None:
    order = coarse_to_fine(list(DEFAULT_RATES))
    assert order[:4] == [0.95, 0.45, 0.2, 0.7]


def test_a_single_rate_has_nothing_left_to_evaluate() -> None:
    assert coarse_to_fine([0.0]) == []


def test_estimate_interpolates_missing_points_and_is_exact_when_complete() -> None:
    rates = [0.0, 0.25, 0.5, 0.75]
    assert estimated_apr(rates, {0.0: 1.0, 0.75: 0.4}) == pytest.approx((1.0 + 0.8 + 0.6 + 0.4) / 4)
    full = {0.0: 0.9, 0.25: 0.1, 0.5: 0.7, 0.75: 0.3}
    assert estimated_apr(rates, full) == pytest.approx(sum(full.values()) / 4)
