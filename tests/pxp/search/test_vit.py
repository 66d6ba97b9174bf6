from __future__ import annotations

import pytest
import torch

from pxp.attribution import ScoringContext, compute_scores
from pxp.models import get_architecture, instantiate
from pxp.search import run_search
from pxp.search.evaluator import TrialEvaluator
from pxp.search.space import SOFTMAX_RULES, TrialConfig, composite_groups
from pxp.spec import VIT_GROUPS, AttributionSpec, CompositeSpec, PruneSpec, RuleSpec, SearchSpec
from pxp.zoo import TINY_KWARGS
from tests.pxp.search.conftest import RATES, Bed, make_bed


@pytest.fixture(scope="module")
def vit() -> Bed:
    """A real torchvision ViT in explicit-attention form (random weights suffice for these checks)."""
    torch.manual_seed(0)
    info = get_architecture("digits_vit")
    model = instantiate(info, info.effective_kwargs({**TINY_KWARGS["digits_vit"], "num_layers": 3})).eval()
    return make_bed(model, "digits_vit", family="vit")


def test_vit_groups_cover_every_depth_and_the_head(vit: Bed) -> None:
    assert composite_groups(vit.model, "vit") == VIT_GROUPS


@pytest.mark.parametrize("softmax", SOFTMAX_RULES)
def test_vit_trial_scores_equal_compute_scores_for_each_softmax_rule(vit: Bed, softmax: str) -> None:
    composite = CompositeSpec(
        rules={"early": RuleSpec(name="gamma", param=0.05), "late": RuleSpec(name="zplus")}, softmax=softmax
    )
    evaluator = TrialEvaluator(
        vit.model, "vit", vit.layers, vit.reference, vit.search, RATES, ("abs", "signed")
    )
    shared, _ = evaluator.scores(composite)
    ctx = ScoringContext(vit.model, "vit", vit.layers, *vit.reference)
    for aggregation in ("abs", "signed"):
        expected = compute_scores(ctx, AttributionSpec(composite=composite, aggregation=aggregation))
        for layer in vit.layers:
            torch.testing.assert_close(shared[aggregation][layer.name], expected[layer.name])
    measure = evaluator.evaluate(TrialConfig(composite, "abs", False))
    assert 0.0 <= measure.apr <= 1.0


def test_vit_search_tunes_the_softmax_handling(vit: Bed) -> None:
    outcome = run_search(
        model=vit.model,
        family="vit",
        layers=vit.layers,
        reference=vit.reference,
        search_split=vit.search,
        prune=PruneSpec(rates=RATES),
        spec=SearchSpec(trials=4, sampler="random", seed=5),
    )
    finished = [row for row in outcome.history if row["state"] != "WAITING"]  # seeds beyond the budget wait
    assert len(finished) == 4 and finished[0]["params"]["softmax"] == "attnlrp"
    assert all("softmax" in row["params"] for row in finished)
    assert {row["config"]["composite"]["softmax"] for row in finished} <= set(SOFTMAX_RULES)
    assert outcome.best.effective_composite().softmax in SOFTMAX_RULES
    assert outcome.best_value >= outcome.default_value
