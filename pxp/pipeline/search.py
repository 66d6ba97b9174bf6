"""The search stage of a job: tune the LRP composite on the search split, judge it on the test split."""

from __future__ import annotations

from pathlib import Path

from pxp.pipeline.curves import curve
from pxp.pipeline.reporter import Reporter
from pxp.pipeline.scoring import remember, score
from pxp.pipeline.state import JobState
from pxp.search import default_storage_url, run_search, search_result, write_search_artifacts
from pxp.search.runner import ComputedConfig
from pxp.spec import AttributionSpec, CurveResult, SearchResult
from pxp.stages import StageStore


def run_job_search(
    state: JobState,
    out_dir: Path,
    store: StageStore,
    report: Reporter,
    study_storage: str | None,
    *,
    baseline: bool = False,
) -> tuple[SearchResult, CurveResult, CurveResult, dict[str, str], ComputedConfig | None]:
    """Tune LRP on the search split, then measure the best and the default composite on the test split.

    Returns the search record, the optimised and default test curves, the artifacts
    written, and what the search computed for the best configuration (its scores and,
    when its trial completed in this process, its search-split curve) or None.
    """
    spec = state.spec
    assert spec.search is not None
    storage = study_storage or spec.search.storage or default_storage_url(out_dir)

    def on_trial(done: int, total: int, value: float | None) -> None:
        shown = "pruned" if value is None else f"A_PR {value:.4f}"
        report("search", 1, message=f"trial {done}/{total}: {shown}", trial=done)

    outcome = run_search(
        model=state.prepared,
        family=state.family,
        layers=state.layers,
        reference=state.reference,
        search_split=state.search,
        prune=spec.prune,
        spec=spec.search,
        storage=storage,
        base=spec.criteria[0],
        progress=on_trial,
        baseline=baseline,
    )
    artifacts = write_search_artifacts(outcome, out_dir)
    # The search already ran the relevance passes of both configurations: checkpoint them as
    # the job's scores, so the stages below read them instead of running the passes again.
    for role, attribution in (("best", outcome.best), ("default", outcome.default)):
        if role in outcome.computed:
            remember(state, attribution, outcome.computed[role].scores, store)

    def test_curve(label: str, attribution: AttributionSpec, normalize: bool) -> CurveResult:
        order = state.order(score(state, attribution, store), normalize=normalize)
        return curve(state, label, order, "test", store)

    best = test_curve("lrp (optimised)", outcome.best, outcome.best_normalize_per_layer)
    default = test_curve("lrp (default)", outcome.default, outcome.default_normalize_per_layer)
    record = search_result(outcome, test_apr_best=best.apr, test_apr_default=default.apr)
    return record, best, default, artifacts, outcome.computed.get("best")
