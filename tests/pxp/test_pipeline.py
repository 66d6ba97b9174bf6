"""The whole local job on a tiny, really trained digits model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pxp import pipeline
from pxp.errors import InvalidDataError, JobCancelledError, UnsupportedArchitectureError
from pxp.pruning.curve import accuracy
from pxp.spec import AttributionSpec, ExportSpec, JobSpec, ModelSpec, ProgressEvent, PruneSpec
from pxp.zoo import TINY_KWARGS

RATES = [0.0, 0.25, 0.5, 0.75]


def _spec(**overrides) -> JobSpec:
    base = dict(
        model=ModelSpec(architecture="digits_vgg", kwargs=TINY_KWARGS["digits_vgg"]),
        criteria=[AttributionSpec(criterion="lrp"), AttributionSpec(criterion="random")],
        prune=PruneSpec(rates=RATES),
        export=ExportSpec(enabled=False),
    )
    base.update(overrides)
    return JobSpec(**base)


def test_pipeline_writes_curves_mask_and_plot(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    result = pipeline.run(_spec(), tmp_path, events.append)

    assert [c.label for c in result.curves] == ["lrp", "random"]
    for c in result.curves:
        assert c.rates == RATES and len(c.accuracies) == len(RATES)
        assert c.apr == pytest.approx(sum(c.accuracies) / len(RATES))
        assert c.safe_rate in RATES
    assert result.curves[0].unpruned_accuracy > 0.8
    assert result.curves[0].unpruned_accuracy == result.curves[1].unpruned_accuracy

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["curves"][0]["accuracies"] == result.curves[0].accuracies
    assert (tmp_path / "curves.png").stat().st_size > 1000
    mask = json.loads((tmp_path / "mask.json").read_text())
    assert mask["criterion"] == "lrp" and mask["rate"] == result.chosen_rate

    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {e.stage for e in events} >= {"load", "data", "attribution:lrp", "curve:lrp", "done"}


def test_unpruned_accuracy_is_the_models_test_accuracy(tmp_path: Path) -> None:
    spec = _spec(criteria=[AttributionSpec(criterion="weight")])
    report = pipeline.silent()
    state = pipeline.build_state(spec, report)
    x, y = state.test
    expected = accuracy(state.loaded.model, x, y)
    result = pipeline.run(spec, tmp_path)
    assert result.curves[0].unpruned_accuracy == pytest.approx(expected)
    split = state.splits
    sets = [set(split.reference.tolist()), set(split.search.tolist()), set(split.test.tolist())]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_rerun_resumes_from_checkpointed_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = pipeline.run(_spec(), tmp_path)
    calls = {"scores": 0, "curve": 0}
    from pxp.pipeline import curves, scoring

    original_scores, original_curve = scoring.compute_scores, curves.evaluate_curve

    def counting_scores(*a, **k):
        calls["scores"] += 1
        return original_scores(*a, **k)

    def counting_curve(*a, **k):
        calls["curve"] += 1
        return original_curve(*a, **k)

    monkeypatch.setattr(scoring, "compute_scores", counting_scores)
    monkeypatch.setattr(curves, "evaluate_curve", counting_curve)
    second = pipeline.run(_spec(), tmp_path)
    assert calls == {"scores": 0, "curve": 0}
    assert second.curves == first.curves


def test_cancel_from_progress_callback_stops_the_job(tmp_path: Path) -> None:
    def cancel_at_attribution(event: ProgressEvent) -> None:
        if event.stage.startswith("attribution"):
            raise JobCancelledError("cancelled by user")

    with pytest.raises(JobCancelledError):
        pipeline.run(_spec(), tmp_path, cancel_at_attribution)
    assert not (tmp_path / "results.json").exists()


def test_user_errors_are_domain_errors(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedArchitectureError):
        pipeline.run(_spec(model=ModelSpec(architecture="no_such_net")), tmp_path)
    images = torch.randint(0, 255, (40, 1, 32, 32), dtype=torch.uint8)
    labels = torch.full((40,), 12, dtype=torch.int64)
    labels[:20] = 0
    from safetensors.torch import save_file

    save_file({"images": images, "labels": labels}, str(tmp_path / "data.safetensors"))
    with pytest.raises(InvalidDataError):
        pipeline.run(_spec(data={"source": str(tmp_path / "data.safetensors")}), tmp_path / "out")


def test_exported_checkpoint_reloads_with_the_reported_accuracy(tmp_path: Path) -> None:
    from pxp.models.compressed import load_compressed

    spec = _spec(
        criteria=[AttributionSpec(criterion="lrp")],
        prune=PruneSpec(rates=RATES, rate=0.25),
        export=ExportSpec(),
    )
    result = pipeline.run(spec, tmp_path)
    assert result.compression is not None
    assert result.compression["params_after"] < result.compression["params_before"]
    assert {"weights", "manifest", "mask", "results", "curves_png"} <= set(result.artifacts)
    model = load_compressed(tmp_path)
    state = pipeline.build_state(spec, pipeline.silent())
    x, y = state.test
    assert accuracy(model, x, y) == pytest.approx(result.compression["test_accuracy"])
    assert result.compression["test_accuracy"] == pytest.approx(
        result.curves[0].accuracies[RATES.index(0.25)]
    )


def test_export_reports_measured_latency_in_result_manifest_and_results_json(tmp_path: Path) -> None:
    spec = _spec(
        criteria=[AttributionSpec(criterion="weight")],
        prune=PruneSpec(rates=RATES, rate=0.5),
        export=ExportSpec(),
    )
    result = pipeline.run(spec, tmp_path)
    assert result.compression is not None
    latency = result.compression["latency"]
    assert latency["statistic"] == "median" and latency["device"] == "cpu"
    assert set(latency["batches"]) == {"1", "32"}
    for point in latency["batches"].values():
        assert point["original_ms"] > 0 and point["compressed_ms"] > 0 and point["repeats"] >= 3
        assert point["speedup"] == pytest.approx(point["original_ms"] / point["compressed_ms"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["metrics"]["latency"] == latency
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["compression"]["latency"] == latency

    off = pipeline.run(
        spec.model_copy(update={"export": ExportSpec(measure_latency=False)}), tmp_path / "off"
    )
    assert off.compression is not None and "latency" not in off.compression


def test_recovered_job_exports_the_model_its_curve_evaluated(tmp_path: Path) -> None:
    from pxp.models.compressed import load_compressed

    spec = _spec(
        criteria=[AttributionSpec(criterion="lrp")],
        prune=PruneSpec(rates=RATES, rate=0.5, recovery=["bn_reestimate", "mean_fold"]),
        export=ExportSpec(measure_latency=False),
    )
    assert spec.prune.recovery == ["bn_reestimate", "mean_fold"]
    result = pipeline.run(spec, tmp_path)
    assert result.compression is not None
    assert result.compression["recovery"] == ["bn_reestimate", "mean_fold"]
    assert result.compression["verification_max_abs_diff"] <= result.compression["verification_tolerance"]
    # The exported model is the recovered one: its test accuracy is the recovered curve's at 0.5.
    assert result.compression["test_accuracy"] == pytest.approx(result.curves[0].accuracies[RATES.index(0.5)])
    state = pipeline.build_state(spec, pipeline.silent())
    x, y = state.test
    assert accuracy(load_compressed(tmp_path), x, y) == pytest.approx(result.compression["test_accuracy"])
    plain = pipeline.run(spec.model_copy(update={"prune": PruneSpec(rates=RATES, rate=0.5)}), tmp_path / "p")
    assert plain.curves[0].accuracies != result.curves[0].accuracies


def test_refined_rate_is_recorded_and_within_the_drop_on_the_search_split(tmp_path: Path) -> None:
    spec = _spec(criteria=[AttributionSpec(criterion="lrp")], prune=PruneSpec(rates=RATES, refine_steps=4))
    result = pipeline.run(spec, tmp_path)
    refinement = result.rate_refinement
    assert refinement is not None and result.chosen_rate == refinement["refined_rate"]
    assert refinement["grid_safe_rate"] <= result.chosen_rate < refinement["grid_safe_rate"] + 0.25
    assert 0 < len(refinement["evaluations"]) <= 4
    state = pipeline.build_state(spec, pipeline.silent())
    unpruned = accuracy(state.prepared, *state.search)
    for rate, acc in refinement["evaluations"]:
        if rate <= result.chosen_rate:
            assert acc >= unpruned - spec.prune.max_accuracy_drop
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rate_refinement"] == refinement
    mask = json.loads((tmp_path / "mask.json").read_text())
    assert mask["rate"] == result.chosen_rate


def test_coupled_cost_aware_job_reports_macs_curves_and_removes_residual_channels(tmp_path: Path) -> None:
    spec = _spec(
        model=ModelSpec(architecture="digits_resnet18", kwargs=TINY_KWARGS["digits_resnet18"]),
        criteria=[AttributionSpec(criterion="lrp")],
        prune=PruneSpec(rates=RATES, rate=0.5, coupled=True, cost_exponent=1.0),
        export=ExportSpec(measure_latency=False),
    )
    result = pipeline.run(spec, tmp_path)
    test_curve = result.curves[0]
    assert test_curve.macs_removed is not None and test_curve.params_removed is not None
    assert test_curve.macs_removed[0] == 0.0
    assert test_curve.macs_removed == sorted(test_curve.macs_removed)
    assert result.compression is not None
    # The cost model's prediction at the exported rate is what removal achieved.
    assert result.compression["flops_removed_fraction"] == pytest.approx(
        test_curve.macs_removed[RATES.index(0.5)], abs=1e-9
    )
    assert result.compression["components_removed"] > 10 * result.compression["components_zeroed"]


def test_budget_objective_exports_the_option_removing_the_most_macs(tmp_path: Path) -> None:
    from pxp.spec import SearchSpec

    spec = _spec(
        criteria=[AttributionSpec(criterion="lrp")],
        prune=PruneSpec(rates=RATES, refine_steps=2),
        search=SearchSpec(trials=1, objective="budget"),
        export=ExportSpec(measure_latency=False),
    )
    result = pipeline.run(spec, tmp_path)
    budget = result.budget
    assert budget is not None and budget["objective"] == "budget"
    tried = budget["tried"]
    assert len(tried) == 9 and {t["cost_exponent"] for t in tried} == {0.0, 0.5, 1.0}
    best = budget["chosen"]
    assert best["macs_removed"] == max(t["macs_removed"] for t in tried)
    assert result.chosen_rate == best["rate"] and result.chosen_label.endswith("(budget)")
    assert result.compression is not None
    assert result.compression["recovery"] == best["recovery"]
    assert result.compression["flops_removed_fraction"] == pytest.approx(best["macs_removed"], abs=1e-9)
    assert any(c.label == result.chosen_label and c.split == "test" for c in result.curves)


def test_budget_objective_tries_least_squares_on_a_vit(tmp_path: Path) -> None:
    """On a ViT the options are recovery off and least squares (β and coupling change nothing there)."""
    from pxp.spec import SearchSpec

    spec = _spec(
        model=ModelSpec(architecture="digits_vit", kwargs={**TINY_KWARGS["digits_vit"], "num_heads": 4}),
        criteria=[AttributionSpec(criterion="lrp")],
        prune=PruneSpec(rates=RATES, refine_steps=2, components="neurons"),
        search=SearchSpec(trials=1, objective="budget"),
        export=ExportSpec(measure_latency=False),
    )
    result = pipeline.run(spec, tmp_path)
    assert result.budget is not None
    tried = result.budget["tried"]
    assert [sorted(t["recovery"]) for t in tried] == [[], ["bn_reestimate", "least_squares"]]
    best = result.budget["chosen"]
    assert result.compression is not None and result.compression["recovery"] == best["recovery"]


def test_measured_speedup_times_the_removed_model_the_export_would_hand_back() -> None:
    """The bounded form of the latency budget: one option, removed and timed as export would."""
    from pxp.pipeline.budget import measured_speedup

    spec = _spec(criteria=[AttributionSpec(criterion="weight")], prune=PruneSpec(rates=RATES, rate=0.5))
    state = pipeline.build_state(spec, pipeline.silent())
    scores = {layer.name: torch.arange(layer.size, dtype=torch.float64) for layer in state.layers}
    keep = state.order(scores).keep_masks(0.5)
    params = sum(p.numel() for p in state.prepared.parameters())
    speedup = measured_speedup(state, keep)
    assert 0.0 < speedup < float("inf")
    # Removal works on a copy: the job's prepared model is still whole.
    assert sum(p.numel() for p in state.prepared.parameters()) == params


@pytest.mark.slow
def test_budget_over_measured_latency_exports_the_fastest_option(tmp_path: Path) -> None:
    from pxp.spec import SearchSpec

    spec = _spec(
        criteria=[AttributionSpec(criterion="lrp")],
        prune=PruneSpec(rates=[0.0, 0.5], refine_steps=0),
        search=SearchSpec(trials=1, objective="budget", budget_metric="latency"),
        export=ExportSpec(measure_latency=False),
    )
    result = pipeline.run(spec, tmp_path)
    budget = result.budget
    assert budget is not None and budget["metric"] == "latency"
    tried = budget["tried"]
    assert all(t["speedup"] > 0 for t in tried)
    best = budget["chosen"]
    assert best["speedup"] == max(t["speedup"] for t in tried)
    assert result.chosen_rate == best["rate"]
    assert result.compression is not None
    assert result.compression["flops_removed_fraction"] == pytest.approx(best["macs_removed"], abs=1e-9)


def test_channel_rounding_exports_widths_that_are_multiples(tmp_path: Path) -> None:
    """``round_to``: every pruned conv of the exported model keeps a multiple of the block."""
    from pxp.models.compressed import load_compressed

    spec = _spec(
        criteria=[AttributionSpec(criterion="weight")],
        prune=PruneSpec(rates=RATES, rate=0.5, round_to=4),
        export=ExportSpec(measure_latency=False),
    )
    result = pipeline.run(spec, tmp_path)
    assert result.round_to == 4
    assert result.achieved_rate is not None and 0.0 < result.achieved_rate <= 0.5
    original = pipeline.build_state(spec, pipeline.silent()).prepared
    widths = {n: m.out_channels for n, m in original.named_modules() if isinstance(m, torch.nn.Conv2d)}
    exported = load_compressed(tmp_path)
    pruned = {
        n: m.out_channels
        for n, m in exported.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.out_channels != widths[n]
    }
    assert pruned and all(w % 4 == 0 for w in pruned.values()), pruned


def test_pareto_bundle_exports_one_reloadable_checkpoint_per_drop(tmp_path: Path) -> None:
    from pxp.models.compressed import load_compressed
    from pxp.spec import ExplainSpec

    spec = _spec(
        criteria=[AttributionSpec(criterion="weight")],
        prune=PruneSpec(rates=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], refine_steps=2),
        export=ExportSpec(pareto_drops=[0.3, 0.01], measure_latency=False),
        explain=ExplainSpec(enabled=False),
    )
    result = pipeline.run(spec, tmp_path)
    points = result.pareto
    assert points is not None and [p["max_accuracy_drop"] for p in points] == [0.01, 0.3]
    rates = [p["rate"] for p in points]
    assert rates == sorted(rates) and rates[-1] > rates[0]  # a looser drop allows at least as much pruning
    x, y = pipeline.build_state(spec, pipeline.silent()).test
    for point in points:
        model = load_compressed(tmp_path / point["directory"])
        assert accuracy(model, x, y) == pytest.approx(point["test_accuracy"])
        assert f"pareto_{point['directory'].split('_')[-1]}_weights" in result.artifacts
    # The main export is the 1-point drop's point: the same ranking, the same search-split rule.
    assert result.chosen_rate == points[0]["rate"]
    assert (tmp_path / result.artifacts["pareto_png"]).stat().st_size > 1000
    for rel in result.artifacts.values():
        assert (tmp_path / rel).is_file()


@pytest.mark.parametrize("drops", [[0.0], [1.0], [-0.01]])
def test_pareto_drops_must_be_fractions(drops: list[float]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="pareto"):
        ExportSpec(pareto_drops=drops)


@pytest.mark.parametrize("name", ["meta", "cuda:99"])
def test_devices_that_cannot_run_a_job_are_user_errors(name):
    import torch

    from pxp.errors import InvalidSpecError
    from pxp.pipeline.state import resolve_device

    if name == "cuda:99" and not torch.cuda.is_available():
        name = "cuda:0"  # no CUDA at all: still a user error, not an internal one
    with pytest.raises(InvalidSpecError):
        resolve_device(name)


def test_vit_curve_with_bn_reestimation_is_the_fast_sweep(tmp_path: Path) -> None:
    """BN re-estimation is masking on a ViT (no BatchNorm): the curve stage plans the fast sweep."""
    from pxp.pipeline.curves import curve
    from pxp.pruning.curve import masked_curve
    from pxp.pruning.ranking import rank
    from pxp.stages import StageStore

    spec = _spec(
        model=ModelSpec(architecture="digits_vit", kwargs=TINY_KWARGS["digits_vit"]),
        prune=PruneSpec(rates=RATES, recovery=["bn_reestimate"]),
    )
    state = pipeline.build_state(spec, pipeline.silent())
    g = torch.Generator().manual_seed(0)
    order = rank(state.layers, {layer.name: torch.rand(layer.size, generator=g) for layer in state.layers})
    result = curve(state, "random", order, "test", StageStore(tmp_path))
    assert state._planned and state._planner is not None  # built for the fast sweep, not skipped
    assert result.accuracies == masked_curve(state.prepared, order, RATES, *state.test)


def test_a_search_job_reuses_the_searchs_relevance_and_search_split_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the search, the best and default composites are not scored again, nor the best one's
    search-split curve evaluated again: the search computed them. The rate is chosen from the
    same numbers a fresh computation gives."""
    from pxp.attribution import ScoringContext, compute_scores
    from pxp.pipeline import curves, scoring
    from pxp.pruning.curve import masked_curve, safe_rate
    from pxp.spec import SearchSpec

    spec = _spec(criteria=[AttributionSpec(criterion="lrp")], search=SearchSpec(trials=4, seed=0))
    state = pipeline.build_state(spec, pipeline.silent())
    calls = {"scores": 0, "search curve": 0}
    original_scores, original_curve = scoring.compute_scores, curves.evaluate_curve

    def counting_scores(*a, **k):  # type: ignore[no-untyped-def]
        calls["scores"] += 1
        return original_scores(*a, **k)

    def counting_curve(model, order, rates, x, *a, **k):  # type: ignore[no-untyped-def]
        if torch.equal(x, state.search[0]):
            calls["search curve"] += 1
        return original_curve(model, order, rates, x, *a, **k)

    monkeypatch.setattr(scoring, "compute_scores", counting_scores)
    monkeypatch.setattr(curves, "evaluate_curve", counting_curve)
    result = pipeline.run(spec, tmp_path)
    assert result.search is not None
    # One relevance pass in the job itself: the criterion's, before the search.
    assert calls == {"scores": 1, "search curve": 0}

    # The reused numbers are the ones a fresh computation gives.
    monkeypatch.undo()
    best = AttributionSpec(
        criterion="lrp", composite=result.search.best_composite, aggregation=result.search.best_aggregation
    )
    scores = compute_scores(
        ScoringContext(state.prepared, state.family, state.layers, *state.reference), best
    )
    order = state.order(scores, normalize=result.search.best_normalize_per_layer)
    search_curve = masked_curve(state.prepared, order, RATES, *state.search)
    assert result.rate_refinement is not None
    assert result.rate_refinement["grid_safe_rate"] == safe_rate(
        RATES, search_curve, spec.prune.max_accuracy_drop
    )
    chosen = next(c for c in result.curves if c.label == result.chosen_label and c.split == "test")
    assert chosen.accuracies == masked_curve(state.prepared, order, RATES, *state.test)
