from __future__ import annotations

import pytest
import torch

from pxp.attribution import ScoringContext, compute_scores
from pxp.models import get_architecture, instantiate
from pxp.pruning.curve import area_under_curve, masked_curve
from pxp.pruning.ranking import rank
from pxp.search.evaluator import TrialEvaluator
from pxp.search.space import TrialConfig
from pxp.spec import AttributionSpec, CompositeSpec, RuleSpec
from pxp.zoo import TINY_KWARGS
from tests.pxp.search.conftest import RATES, Bed, make_bed

MIXED = CompositeSpec(
    rules={
        "low": RuleSpec(name="zplus"),
        "mid": RuleSpec(name="gamma", param=0.1),
        "high": RuleSpec(name="alpha_beta", param=1.5),
        "fc": RuleSpec(name="epsilon", param=1e-3),
    }
)


def _evaluator(bed: Bed, **kwargs: object) -> TrialEvaluator:
    return TrialEvaluator(
        model=bed.model,
        family="cnn",
        layers=bed.layers,
        reference=bed.reference,
        evaluation=bed.search,
        rates=RATES,
        aggregations=("abs", "signed"),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def resnet() -> Bed:
    """A real torchvision ResNet (random weights suffice): the residual canonizer path."""
    torch.manual_seed(0)
    info = get_architecture("digits_resnet18")
    return make_bed(
        instantiate(info, info.effective_kwargs(TINY_KWARGS["digits_resnet18"])).eval(), "digits_resnet18"
    )


@pytest.mark.parametrize("composite", [CompositeSpec(), MIXED], ids=["default", "mixed"])
@pytest.mark.parametrize("bed_name", ["vgg", "resnet"])
def test_shared_canonization_gives_the_scores_of_compute_scores(
    bed_name: str, composite: CompositeSpec, request: pytest.FixtureRequest
) -> None:
    bed: Bed = request.getfixturevalue(bed_name)
    evaluator = _evaluator(bed, batch_size=16)
    shared, _ = evaluator.scores(composite)
    ctx = ScoringContext(bed.model, "cnn", bed.layers, *bed.reference)
    for aggregation in ("abs", "signed"):
        spec = AttributionSpec(criterion="lrp", composite=composite, aggregation=aggregation, batch_size=16)
        expected = compute_scores(ctx, spec)
        for layer in bed.layers:
            torch.testing.assert_close(
                shared[aggregation][layer.name], expected[layer.name], rtol=1e-9, atol=1e-12
            )


def test_trial_apr_equals_the_standard_pipeline_path(vgg: Bed) -> None:
    """What the search optimises is exactly the A_PR the job reports for that configuration."""
    evaluator = _evaluator(vgg)
    ctx = ScoringContext(vgg.model, "cnn", vgg.layers, *vgg.reference)
    for config in (TrialConfig(CompositeSpec(), "abs", False), TrialConfig(MIXED, "signed", True)):
        steps: list[tuple[int, float]] = []

        def record(step: int, _rate: float, _acc: float, estimate: float, steps: list = steps) -> None:
            steps.append((step, estimate))

        measure = evaluator.evaluate(config, record)
        scores = compute_scores(ctx, config.attribution())
        order = rank(vgg.layers, scores, normalize_per_layer=config.normalize_per_layer)
        accuracies = masked_curve(vgg.model, order, RATES, *vgg.search)
        assert measure.apr == pytest.approx(area_under_curve(accuracies), abs=1e-12)
        assert [measure.accuracies[r] for r in RATES] == accuracies
        assert [s for s, _ in steps] == list(range(len(RATES) - 1))
        assert steps[-1][1] == pytest.approx(measure.apr, abs=1e-12)


def test_one_relevance_pass_serves_every_aggregation_and_ranking(vgg: Bed) -> None:
    evaluator = _evaluator(vgg)
    first = evaluator.evaluate(TrialConfig(MIXED, "abs", False))
    other = evaluator.evaluate(TrialConfig(MIXED, "signed", True))
    again = evaluator.evaluate(TrialConfig(MIXED, "abs", False))
    assert not first.reused_relevance and other.reused_relevance
    assert other.relevance_s < first.relevance_s
    assert again.repeated and again.apr == first.apr and again.relevance_s == again.curve_s == 0.0
    assert evaluator.unpruned_accuracy == first.accuracies[0.0] > 0.5


def test_rates_must_include_the_unpruned_point(vgg: Bed) -> None:
    with pytest.raises(ValueError, match=r"0\.0"):
        TrialEvaluator(vgg.model, "cnn", vgg.layers, vgg.reference, vgg.search, [0.5], ("abs",))


def test_trials_score_the_recovered_coupled_model_the_job_exports(resnet: Bed) -> None:
    """With the job's recovery and ranking, a trial's curve is the pipeline's recovered curve of that order."""
    from pxp.pruning.coupling import component_graph, rank_with_cost
    from pxp.pruning.recovery import Recovery, recovered_curve
    from pxp.search.runner import _job_ranker, _job_recovery
    from pxp.spec import PruneSpec

    prune = PruneSpec(rates=RATES, recovery=["least_squares", "bn_reestimate"], coupled=True)
    args = (resnet.model, "cnn", resnet.layers, resnet.reference, prune)
    recovery = _job_recovery(*args)  # type: ignore[arg-type]
    evaluator = _evaluator(resnet, batch_size=16, recovery=recovery, ranker=_job_ranker(*args))  # type: ignore[arg-type]
    config = TrialConfig(CompositeSpec(), "abs", False)
    measure = evaluator.evaluate(config)
    scores, _ = evaluator.scores(config.composite)
    graph = component_graph(resnet.model, "cnn", resnet.layers, resnet.reference[0][:1])
    order = rank_with_cost(resnet.layers, scores["abs"], graph, coupled=True, cost_exponent=0.0)
    want = recovered_curve(
        Recovery(resnet.model, "cnn", resnet.layers, resnet.reference[0], prune.recovery),
        order,
        sorted(RATES),
        *resnet.search,
    )
    assert [measure.accuracies[r] for r in sorted(RATES)] == want
    plain = _evaluator(resnet, batch_size=16).evaluate(config)
    assert plain.accuracies != measure.accuracies


def test_a_recovery_that_changes_nothing_keeps_the_fast_sweeps_planner(resnet: Bed) -> None:
    """A ViT trial with BN re-estimation (masking there: no BatchNorm) runs the fast sweep; a CNN's does not."""
    from pxp.pruning.recovery import Recovery

    torch.manual_seed(0)
    info = get_architecture("digits_vit")
    vit = make_bed(
        instantiate(info, info.effective_kwargs(TINY_KWARGS["digits_vit"])).eval(), "digits_vit", "vit"
    )
    methods = ["bn_reestimate"]
    for bed, family, fast in ((vit, "vit", True), (resnet, "cnn", False)):
        recovery = Recovery(bed.model, family, bed.layers, bed.reference[0], methods)  # type: ignore[arg-type]
        evaluator = TrialEvaluator(
            model=bed.model,
            family=family,  # type: ignore[arg-type]
            layers=bed.layers,
            reference=bed.reference,
            evaluation=bed.search,
            rates=RATES,
            aggregations=("abs",),
            recovery=recovery,
        )
        assert (evaluator.planner() is not None) is fast
