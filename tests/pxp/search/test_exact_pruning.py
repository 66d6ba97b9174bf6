"""Exact early stopping: a trial is pruned only when its partial curve proves it cannot beat the best."""

from __future__ import annotations

import itertools

import pytest

from pxp.pruning.curve import area_under_curve
from pxp.search import run_search
from pxp.search.evaluator import CannotBeat, TrialEvaluator, apr_upper_bound
from pxp.search.space import SearchSpace, composite_groups
from pxp.spec import CompositeSpec, PruneSpec, RuleSpec, SearchSpec
from tests.pxp.search.conftest import RATES, Bed


def _evaluator(bed: Bed) -> TrialEvaluator:
    return TrialEvaluator(
        model=bed.model,
        family="cnn",
        layers=bed.layers,
        reference=bed.reference,
        evaluation=bed.search,
        rates=RATES,
        aggregations=("abs", "signed"),
        rate_order="descending",
    )


def test_the_bound_is_never_below_any_completion_and_exact_when_complete() -> None:
    rates = [0.0, 0.25, 0.5, 0.75]
    levels = [0.0, 0.3, 1.0]
    for accs in itertools.product(levels, repeat=len(rates)):
        apr = area_under_curve(list(accs))
        for n_known in range(len(rates) + 1):
            known = dict(zip(rates[:n_known], accs[:n_known], strict=True))
            assert apr_upper_bound(rates, known) >= apr - 1e-12
        assert apr_upper_bound(rates, dict(zip(rates, accs, strict=True))) == pytest.approx(apr, abs=1e-12)


def test_a_trial_is_stopped_only_below_the_value_to_beat(vgg: Bed) -> None:
    from pxp.search.space import TrialConfig

    config = TrialConfig(CompositeSpec(rules={"fc": RuleSpec(name="zplus")}), "abs", False)
    full = _evaluator(vgg).evaluate(config)
    # A tie (or anything it exceeds) is never stopped: the full curve is evaluated.
    assert _evaluator(vgg).evaluate(config, beat=full.apr).apr == full.apr
    # A value the curve misses by more than its last-evaluated rate (the lowest, rates run
    # descending) could still add: once every other rate is known, the bound proves it.
    lowest = min(r for r in RATES if r > 0)
    beat = full.apr + (1.0 - full.accuracies[lowest]) / len(RATES) + 0.01
    steps: list[int] = []
    with pytest.raises(CannotBeat) as stopped:
        _evaluator(vgg).evaluate(config, lambda step, *_: steps.append(step), beat=beat)
    assert full.apr <= stopped.value.bound < beat
    assert len(steps) < len(RATES) - 1  # stopped before the last rate


def test_every_pruned_trial_could_not_have_won(vgg: Bed) -> None:
    prune = PruneSpec(rates=RATES)
    outcome = run_search(
        model=vgg.model,
        family="cnn",
        layers=vgg.layers,
        reference=vgg.reference,
        search_split=vgg.search,
        prune=prune,
        spec=SearchSpec(trials=14, seed=0, plateau_trials=None),
    )
    pruned = [row for row in outcome.history if row["state"] == "PRUNED"]
    assert pruned, "seeded: this search prunes, so the pruned path is exercised"
    space = SearchSpace(
        family="cnn",
        groups=composite_groups(vgg.model, "cnn"),
        search_aggregation=True,
        search_normalization=True,
    )
    evaluator = _evaluator(vgg)
    for row in pruned:
        assert "pxp_role" not in row["user_attrs"]  # the seeds are never pruned
        beat = row["user_attrs"]["pxp_beat"]
        # The best complete value before it is what it had to beat...
        earlier = [
            r["value"] for r in outcome.history if r["state"] == "COMPLETE" and r["number"] < row["number"]
        ]
        assert beat == max(earlier)
        # ...and evaluated in full, it does not beat it: pruning it changed nothing about the winner.
        full = evaluator.evaluate(space.config_from_params(row["params"]))
        assert full.apr <= row["user_attrs"]["pxp_bound"] + 1e-12
        assert full.apr < beat <= outcome.best_value
