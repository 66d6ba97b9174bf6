from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pxp.attribution import ScoringContext, compute_scores
from pxp.errors import InvalidDataError, InvalidSpecError, JobCancelledError
from pxp.pruning.curve import area_under_curve, masked_curve
from pxp.pruning.ranking import rank
from pxp.search import SearchOutcome, default_storage_url, run_search, search_result, write_search_artifacts
from pxp.search.study import tensor_digest
from pxp.spec import AttributionSpec, CompositeSpec, PruneSpec, RuleSpec, SearchSpec
from tests.pxp.search.conftest import RATES, Bed


def _search(bed: Bed, prune: PruneSpec, spec: SearchSpec, **kwargs: object) -> SearchOutcome:
    return run_search(
        model=bed.model,
        family="cnn",
        layers=bed.layers,
        reference=bed.reference,
        search_split=bed.search,
        prune=prune,
        spec=spec,
        **kwargs,  # type: ignore[arg-type]
    )


def _standard_apr(bed: Bed, spec: AttributionSpec, normalize: bool) -> float:
    scores = compute_scores(ScoringContext(bed.model, "cnn", bed.layers, *bed.reference), spec)
    order = rank(bed.layers, scores, normalize_per_layer=normalize)
    return area_under_curve(masked_curve(bed.model, order, RATES, *bed.search))


@pytest.fixture(scope="module")
def searched(vgg: Bed, tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchOutcome, str]:
    url = default_storage_url(tmp_path_factory.mktemp("search"))
    outcome = _search(
        vgg, PruneSpec(rates=RATES), SearchSpec(trials=10, seed=1), storage=url, study_name="job-1"
    )
    return outcome, url


def test_search_keeps_or_beats_the_default_composite(searched: tuple[SearchOutcome, str], vgg: Bed) -> None:
    outcome, _ = searched
    assert outcome.trials_completed + outcome.trials_pruned == 10
    first = outcome.history[0]
    assert first["user_attrs"]["pxp_role"] == "default"
    assert set(first["params"].values()) >= {"epsilon", 1e-6, "abs", False}
    assert outcome.best_value >= outcome.default_value
    assert outcome.best_value == max(row["value"] for row in outcome.history if row["state"] == "COMPLETE")
    # Both figures are what the job's own scoring path measures for those configurations.
    assert outcome.default_value == pytest.approx(_standard_apr(vgg, outcome.default, False), abs=1e-12)
    best = _standard_apr(vgg, outcome.best, outcome.best_normalize_per_layer)
    assert outcome.best_value == pytest.approx(best, abs=1e-12)
    assert outcome.best.criterion == "lrp" and outcome.best.composite is not None


def test_the_objective_sees_the_search_split_only(searched: tuple[SearchOutcome, str], vgg: Bed) -> None:
    outcome, _ = searched
    assert not set(vgg.splits.search.tolist()) & set(vgg.splits.test.tolist())
    assert not set(vgg.splits.reference.tolist()) & set(vgg.splits.test.tolist())
    assert outcome.search_data_sha256 == tensor_digest([("x", vgg.search[0]), ("y", vgg.search[1])])
    assert outcome.reference_data_sha256 == tensor_digest([("x", vgg.reference[0]), ("y", vgg.reference[1])])
    assert outcome.search_data_sha256 != tensor_digest([("x", vgg.test[0]), ("y", vgg.test[1])])
    # The unpruned point of every curve is the model's accuracy on exactly those search samples.
    x, y = vgg.search
    unpruned = float((vgg.model(x).argmax(-1) == y).float().mean())
    complete = [row for row in outcome.history if row["state"] == "COMPLETE"]
    assert [row["user_attrs"]["accuracies"][0] for row in complete] == [pytest.approx(unpruned)] * len(
        complete
    )


def test_a_finished_study_is_not_rerun_and_can_be_extended(
    searched: tuple[SearchOutcome, str], vgg: Bed
) -> None:
    outcome, url = searched
    again = _search(
        vgg, PruneSpec(rates=RATES), SearchSpec(trials=10, seed=1), storage=url, study_name="job-1"
    )
    assert again.history == outcome.history
    more = _search(
        vgg, PruneSpec(rates=RATES), SearchSpec(trials=12, seed=1), storage=url, study_name="job-1"
    )
    assert more.trials_completed + more.trials_pruned == 12
    assert more.history[:10] == outcome.history


def test_resuming_with_other_rates_is_refused(searched: tuple[SearchOutcome, str], vgg: Bed) -> None:
    _, url = searched
    with pytest.raises(InvalidSpecError, match="different search"):
        _search(vgg, PruneSpec(rates=[0.0, 0.5]), SearchSpec(trials=10), storage=url, study_name="job-1")


def test_artifacts(searched: tuple[SearchOutcome, str], tmp_path: Path) -> None:
    outcome, _ = searched
    files = write_search_artifacts(outcome, tmp_path)
    assert files == {
        "study": "study.json",
        "search_history": "search_history.png",
        "search_importances": "search_importances.png",
    }
    record = json.loads((tmp_path / "study.json").read_text())
    assert record["best_value"] == outcome.best_value and len(record["history"]) == 10
    assert set(record["importances"]) >= {"rule_low", "aggregation", "normalize_per_layer"}
    for name in ("search_history.png", "search_importances.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = search_result(outcome, test_apr_best=0.5, test_apr_default=0.4)
    assert result.search_apr_best == outcome.best_value and result.study_name == "job-1"


def test_cancelling_from_progress_keeps_the_study_resumable(
    vgg: Bed, prune: PruneSpec, tmp_path: Path
) -> None:
    url = default_storage_url(tmp_path)
    seen: list[tuple[int, int]] = []

    def cancel_after_three(done: int, total: int, best: float | None) -> None:
        seen.append((done, total))
        assert best is not None
        if done == 3:
            raise JobCancelledError("cancelled")

    spec = SearchSpec(trials=5, seed=2)
    with pytest.raises(JobCancelledError):
        _search(vgg, prune, spec, storage=url, study_name="c", progress=cancel_after_three)
    assert seen == [(1, 5), (2, 5), (3, 5)]
    study = optuna.load_study(study_name="c", storage=url)
    started = [t for t in study.trials if t.state != TrialState.WAITING]  # seeds not reached yet wait
    assert [t.state for t in started] == [TrialState.COMPLETE] * 3
    kept = [(t.params, t.value) for t in started]

    outcome = _search(
        vgg, prune, spec, storage=url, study_name="c", progress=lambda d, t, b: seen.append((d, t))
    )
    assert seen[3:] == [(4, 5), (5, 5)]
    assert outcome.trials_completed == 5
    assert [(row["params"], row["value"]) for row in outcome.history[:3]] == kept


def test_median_pruning_on_coarse_to_fine_curves(vgg: Bed, prune: PruneSpec) -> None:
    outcome = _search(vgg, prune, SearchSpec(trials=10, median_pruning=True, exact_pruning=False, seed=0))
    assert outcome.trials_completed + outcome.trials_pruned == 10
    assert outcome.history[0]["state"] == "COMPLETE"
    assert outcome.trials_pruned >= 1  # seeded: this run prunes, so the pruned path is exercised
    for row in outcome.history:
        steps = [int(k) for k in row["intermediate"]]
        if row["state"] == "COMPLETE" and not row["user_attrs"].get("repeated"):
            assert steps == list(range(len(RATES) - 1))
            assert row["intermediate"][str(steps[-1])] == pytest.approx(row["value"])
        if row["state"] == "PRUNED":
            assert 2 <= steps[-1] < len(RATES) - 2


def test_the_user_and_literature_composites_are_tried_right_after_the_default(
    vgg: Bed, prune: PruneSpec
) -> None:
    user = CompositeSpec(rules={"low": RuleSpec(name="zplus"), "fc": RuleSpec(name="gamma", param=0.5)})
    outcome = _search(vgg, prune, SearchSpec(trials=10), base=AttributionSpec(composite=user))
    roles = [row["user_attrs"].get("pxp_role") for row in outcome.history]
    seeds = ["default", "user", "yeom2021", "montavon2019", "pxp2024_eps_over_zplus"]
    seeds += ["pxp2024_eps_ab_fc", "pxp2024_gamma_ab_fc", "pxp2024_zplus_ab_fc"]
    assert roles == [*seeds, None, None]
    assert outcome.best_value >= max(row["value"] for row in outcome.history[: len(seeds)])
    second = outcome.history[1]
    assert second["user_attrs"]["pxp_role"] == "user"
    assert second["config"]["composite"]["rules"]["low"]["name"] == "zplus"
    assert second["config"]["composite"]["rules"]["fc"] == {"name": "gamma", "param": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prune": PruneSpec(rates=[0.0])}, InvalidSpecError, "rate above 0"),
        ({"family": "mlp"}, InvalidSpecError, "families"),
        ({"layers": []}, InvalidSpecError, "prunable layer"),
        ({"base": AttributionSpec(criterion="gradient")}, InvalidSpecError, "tunes LRP"),
        ({"storage": "results/study.db"}, InvalidSpecError, "database URL"),
        ({"study_name": "a\nb"}, InvalidSpecError, "study name"),
        ({"spec": SearchSpec.model_construct(trials=0)}, InvalidSpecError, "trials"),
        ({"search_split": "empty"}, InvalidDataError, "search split"),
    ],
)
def test_invalid_searches_fail_fast_with_clear_errors(
    vgg: Bed, prune: PruneSpec, kwargs: dict, error: type[Exception], match: str
) -> None:
    args = {
        "model": vgg.model,
        "family": "cnn",
        "layers": vgg.layers,
        "reference": vgg.reference,
        "search_split": vgg.search,
        "prune": prune,
        "spec": SearchSpec(trials=2),
    }
    args.update(kwargs)
    if args["search_split"] == "empty":
        args["search_split"] = (vgg.search[0][:0], vgg.search[1][:0])
    with pytest.raises(error, match=match):
        run_search(**args)


def test_the_wall_clock_budget_counts_earlier_runs(vgg: Bed, prune: PruneSpec, tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    spec = SearchSpec(trials=50, timeout_s=0.01)
    first = _search(vgg, prune, spec, storage=url, study_name="t")
    assert first.trials_completed == 1 and first.history[0]["user_attrs"]["pxp_role"] == "default"
    again = _search(vgg, prune, spec, storage=url, study_name="t")
    assert again.history == first.history


def test_the_search_stops_on_a_plateau_and_a_resumed_one_stays_stopped(
    vgg: Bed, prune: PruneSpec, tmp_path: Path
) -> None:
    url = default_storage_url(tmp_path)
    spec = SearchSpec(trials=20, seed=0, plateau_trials=2)
    outcome = _search(vgg, prune, spec, storage=url, study_name="p")
    finished = [row for row in outcome.history if row["state"] in ("COMPLETE", "PRUNED")]
    assert outcome.stopped_on_plateau and len(finished) < 20
    values = [row["value"] if row["state"] == "COMPLETE" else float("-inf") for row in finished]
    best_at = values.index(max(values))
    assert len(finished) - 1 - best_at == 2  # exactly two finished trials after the best, then stop
    again = _search(vgg, prune, spec, storage=url, study_name="p")
    assert again.history == outcome.history and again.stopped_on_plateau
