"""One function that runs a whole compression job from a JobSpec.

Stages (one module each, depending downward only): build the state → score with
every criterion (reference split) → curves (test split) → optional LRP search
(search split) → choose the rate (search split) → remove, verify, export. Every
stage's output is checkpointed under ``out_dir/.stages`` so a retried job resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pxp.pipeline.budget import choose_budget, refined_rate
from pxp.pipeline.curves import curve
from pxp.pipeline.explain import write_explanations
from pxp.pipeline.export import export_job
from pxp.pipeline.pareto import export_pareto
from pxp.pipeline.provenance import PROVENANCE_NAME, build_provenance
from pxp.pipeline.reporter import ProgressCallback, Reporter
from pxp.pipeline.sanity import no_safe_rate_unless_baseline_passed
from pxp.pipeline.scoring import score
from pxp.pipeline.search import run_job_search
from pxp.pipeline.state import build_state
from pxp.pruning.ranking import PruneOrder
from pxp.report import write_plot
from pxp.report_html import REPORT_NAME, write_html_report
from pxp.spec import AttributionSpec, CurveResult, JobResult, JobSpec, SearchResult
from pxp.stages import StageStore, write_json_atomic


def _best_attribution(result: SearchResult, base: AttributionSpec) -> AttributionSpec:
    return base.model_copy(
        update={
            "criterion": "lrp",
            "composite": result.best_composite,
            "aggregation": result.best_aggregation,
        }
    )


def run(
    spec: JobSpec,
    out_dir: Path,
    progress: ProgressCallback | None = None,
    *,
    study_storage: str | None = None,
    baseline: bool = False,
) -> JobResult:
    """Run a whole compression job; artifacts land in ``out_dir`` and are listed in the result.

    Args:
        spec: the job: model, data, splits, criteria, prune, search and export settings.
        out_dir: where artifacts and the stage checkpoints go; a rerun into the same
            directory resumes from the finished stages.
        progress: called with a :class:`~pxp.spec.ProgressEvent` between steps; it may
            raise :class:`~pxp.errors.JobCancelledError` to stop the job there.
        study_storage: an Optuna storage URL for the search (default: SQLite in ``out_dir``).
        baseline: internal, for ``bench/job.py``: run the path this one replaced (masked
            curves; the search without the per-family seeds, exact pruning and plateau
            stop) to measure against in the same process. Curves are identical either way.

    Returns:
        The :class:`~pxp.spec.JobResult`, also written to ``out_dir/results.json``.

    Raises:
        UserError: a subclass (``InvalidModelError``, ``InvalidDataError``,
            ``InvalidSpecError``, ``UnsupportedArchitectureError``) when the inputs are wrong.
        JobCancelledError: raised by ``progress``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = StageStore(out_dir)
    units = 3 + 2 * len(spec.criteria) + (spec.search.trials if spec.search else 0) + 2
    report = Reporter(progress, units)
    started = time.monotonic()

    state = build_state(spec, report)
    if baseline:
        state.curve_method = "masked"
    curves: list[CurveResult] = []
    orders: dict[str, PruneOrder] = {}
    scored: dict[str, tuple[AttributionSpec, dict[str, torch.Tensor]]] = {}
    for attribution in spec.criteria:
        label = attribution.label
        report(f"attribution:{label}", 0, message=f"scoring with {label}")
        scores = score(state, attribution, store)
        scored[label] = (attribution, scores)
        report(f"attribution:{label}", 1, message=f"scored with {label}")
        order = state.order(scores)
        orders[label] = order
        result = no_safe_rate_unless_baseline_passed(state, curve(state, label, order, "test", store))
        curves.append(result)
        report(
            f"curve:{label}", 1, message=f"{label}: A_PR {result.apr:.4f}, safe rate {result.safe_rate:.2f}"
        )

    chosen_label = spec.criteria[0].label
    search_result = None
    best_computed = None
    artifacts: dict[str, str] = {}
    if spec.search is not None:
        report("search", 0, message="tuning the LRP composite")
        search_result, best_curve, default_curve, search_artifacts, best_computed = run_job_search(
            state, out_dir, store, report, study_storage, baseline=baseline
        )
        artifacts.update(search_artifacts)
        if not any(c.label == "lrp" and c.accuracies == default_curve.accuracies for c in curves):
            curves.append(default_curve)
        curves.append(best_curve)
        curves = [no_safe_rate_unless_baseline_passed(state, c) for c in curves]
        chosen_label = best_curve.label
        best_attribution = _best_attribution(search_result, spec.criteria[0])
        best_scores = score(state, best_attribution, store)
        scored[chosen_label] = (best_attribution, best_scores)
        orders[chosen_label] = state.order(best_scores, normalize=search_result.best_normalize_per_layer)

    chosen_order = orders[chosen_label]
    # The search's complete trial of the best configuration measured its order on the search
    # split; where that is the chosen order (same mask key), its curve is the rate choice's grid.
    known_search_curve = None
    if best_computed is not None:
        known_search_curve = best_computed.curve_for(chosen_order.mask_key())
    rate_refinement = None
    budget_record = None
    if spec.search is not None and spec.search.objective == "budget" and spec.prune.rate is None:
        # Budget: among ranking / recovery options, the most MACs removed within the drop (search split).
        if search_result is not None and chosen_label == "lrp (optimised)":
            attribution, normalize = (
                _best_attribution(search_result, spec.criteria[0]),
                search_result.best_normalize_per_layer,
            )
        else:
            attribution, normalize = spec.criteria[0], None
        chosen_scores = score(state, attribution, store)
        state, budget_record = choose_budget(state, chosen_scores, store, normalize)
        chosen_order = state.order(chosen_scores, normalize=normalize)
        chosen_label = f"{chosen_label} (budget)"
        scored[chosen_label] = (attribution, chosen_scores)
        curves.append(curve(state, chosen_label, chosen_order, "test", store))
        assert state.spec.prune.rate is not None
        chosen_rate = state.spec.prune.rate
    elif spec.prune.rate is not None:
        chosen_rate = spec.prune.rate
    elif state.baseline is not None and not state.baseline.passed:
        # A broken baseline makes every rate look safe; export unpruned instead.
        chosen_rate = 0.0
    else:
        # The rate is chosen on the search split, so the test split stays an unbiased report.
        search_curve = curve(state, chosen_label, chosen_order, "search", store, known=known_search_curve)
        refinement = refined_rate(state, chosen_order, search_curve, store)
        chosen_rate = refinement.refined_rate
        rate_refinement = refinement.as_dict()
    report("export", 1, message=f"chosen: {chosen_label} at rate {chosen_rate:.3f}")

    mask_file = out_dir / "mask.json"
    keep = chosen_order.keep_masks(chosen_rate)
    kept_indices = {name: torch.nonzero(m).flatten().tolist() for name, m in keep.items()}
    write_json_atomic(
        mask_file,
        {
            "criterion": chosen_label,
            "rate": chosen_rate,
            "achieved_rate": chosen_order.achieved_rate(chosen_rate),
            "round_to": chosen_order.round_to,
            "kept_indices": kept_indices,
        },
    )
    artifacts["mask"] = mask_file.name
    chosen_attribution, chosen_scores = scored[chosen_label]
    provenance = build_provenance(
        state,
        chosen_label=chosen_label,
        chosen_attribution=chosen_attribution.model_dump(mode="json"),
        rate=chosen_rate,
        kept_indices=kept_indices,
        order=list(chosen_order.order),
    )
    write_json_atomic(out_dir / PROVENANCE_NAME, provenance)
    artifacts["provenance"] = PROVENANCE_NAME
    explanations: dict[str, Any] | None = None
    if spec.explain.enabled:
        report("explain", 0, message="heatmaps and per-layer statistics")
        explained, explanations = write_explanations(
            state,
            out_dir,
            attribution=chosen_attribution,
            scores=chosen_scores,
            keep=keep,
            rate=chosen_rate,
            per_class=spec.explain.heatmaps_per_class,
        )
        artifacts.update(explained)

    compression = None
    if spec.export.enabled:
        index = next(i for i, c in enumerate(curves) if c.label == chosen_label and c.split == "test")
        exported = export_job(
            state, chosen_label, chosen_rate, keep, out_dir, curves[index].unpruned_accuracy, provenance
        )
        compression = exported.summary
        artifacts.update(exported.artifacts)
        curves[index] = curves[index].model_copy(
            update={
                "params_removed_fraction": exported.params_removed_fraction,
                "flops_removed_fraction": exported.flops_removed_fraction,
            }
        )
    pareto = None
    if spec.export.enabled and spec.export.pareto_drops:
        report("export", 1, message=f"pareto bundle: {len(spec.export.pareto_drops)} checkpoints")
        unpruned = next(c.unpruned_accuracy for c in curves if c.label == chosen_label and c.split == "test")
        pareto, pareto_artifacts = export_pareto(state, chosen_label, chosen_order, out_dir, unpruned, store)
        artifacts.update(pareto_artifacts)

    artifacts["curves_png"] = "curves.png"
    artifacts["results"] = "results.json"
    if spec.explain.enabled:
        artifacts["report"] = REPORT_NAME
    job_result = JobResult(
        architecture=spec.model.architecture,
        family=state.family,
        num_classes=state.loaded.num_classes,
        class_names=state.data.class_names,
        split_sizes={
            "reference": len(state.splits.reference),
            "search": len(state.splits.search),
            "test": len(state.splits.test),
        },
        curves=curves,
        chosen_label=chosen_label,
        chosen_rate=chosen_rate,
        achieved_rate=chosen_order.achieved_rate(chosen_rate),
        round_to=chosen_order.round_to,
        rate_refinement=rate_refinement,
        budget=budget_record,
        search=search_result,
        compression=compression,
        pareto=pareto,
        artifacts=artifacts,
    )
    write_plot(job_result, out_dir / "curves.png")
    write_json_atomic(out_dir / "results.json", job_result.model_dump(mode="json"))
    if spec.explain.enabled:
        write_html_report(out_dir, job_result, provenance, explanations)
    report("done", units, message=f"finished in {time.monotonic() - started:.1f}s")
    return job_result
