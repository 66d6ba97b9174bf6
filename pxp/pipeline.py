"""One function that runs a whole compression job from a JobSpec.

Stages: load model → load data and split → prepare model and find components →
score with every criterion (reference split) → curves (test split) → optional
LRP search (search split) → choose the rate (search split) → remove, verify,
export. Every stage's output is checkpointed under ``out_dir/.stages`` so a
retried job resumes. The progress callback is called between steps and may
raise :class:`~pxp.errors.JobCancelledError` to stop the job there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import Family, PrunableLayer, default_kind, find_layers, prepare_model
from pxp.data import LabelledData, Splits, load_data, make_splits
from pxp.errors import InvalidDataError, InvalidSpecError
from pxp.models import LoadedModel, build_model
from pxp.pruning.curve import area_under_curve, masked_curve, safe_rate
from pxp.pruning.ranking import PruneOrder, rank
from pxp.spec import AttributionSpec, CurveResult, JobResult, JobSpec, ProgressEvent, SearchResult
from pxp.stages import StageStore, stage_key, write_json_atomic

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressEvent], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidSpecError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidSpecError("device 'cuda' requested but no CUDA device is available")
    return device


@dataclass
class JobState:
    """Everything the stages share: built once per job, reused by every criterion and trial."""

    spec: JobSpec
    loaded: LoadedModel
    family: Family
    data: LabelledData
    splits: Splits
    prepared: nn.Module
    layers: list[PrunableLayer]
    device: torch.device
    reference: tuple[torch.Tensor, torch.Tensor]
    search: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    def order(self, scores: dict[str, torch.Tensor], normalize: bool | None = None) -> PruneOrder:
        prune = self.spec.prune
        return rank(
            self.layers,
            scores,
            normalize_per_layer=prune.normalize_per_layer if normalize is None else normalize,
            min_keep=prune.min_keep,
        )


class _Reporter:
    """Maps stage-local progress onto one monotone job fraction."""

    def __init__(self, callback: ProgressCallback | None, total_units: float) -> None:
        self.callback = callback
        self.total = max(total_units, 1.0)
        self.done = 0.0

    def __call__(self, stage: str, units: float = 0.0, message: str = "", trial: int | None = None) -> None:
        self.done = min(self.total, self.done + units)
        if self.callback is not None:
            self.callback(
                ProgressEvent(stage=stage, fraction=self.done / self.total, message=message, trial=trial)
            )


def _split_tensors(
    data: LabelledData,
    idx: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    return data.normalized(idx, mean, std).to(device), data.labels[idx].to(device)


def build_state(spec: JobSpec, report: _Reporter) -> JobState:
    report("load", message=f"building {spec.model.architecture}")
    loaded = build_model(spec.model)
    info = loaded.info
    family: Family = info.family
    device = resolve_device(spec.device)
    report("data", 1, message=f"loading data from {spec.data.source}")
    image_size = spec.data.image_size or info.image_size
    data = load_data(spec.data, image_size=image_size, channels=info.input_channels)
    if int(data.labels.max()) >= loaded.num_classes:
        raise InvalidDataError(
            f"the data has {len(data.class_names)} classes but the model outputs {loaded.num_classes}"
        )
    splits = make_splits(data.labels, spec.splits)
    mean = tuple(spec.data.mean or info.mean)
    std = tuple(spec.data.std or info.std)
    prepared = prepare_model(loaded.model, family).to(device)
    kind = spec.prune.components or default_kind(family)
    layers = find_layers(prepared, family, kind, spec.prune.exclude)
    report("data", 1, message=f"{len(layers)} prunable layers, {sum(x.size for x in layers)} {kind}")
    return JobState(
        spec=spec,
        loaded=loaded,
        family=family,
        data=data,
        splits=splits,
        prepared=prepared,
        layers=layers,
        device=device,
        reference=_split_tensors(data, splits.reference, mean, std, device),
        search=_split_tensors(data, splits.search, mean, std, device),
        test=_split_tensors(data, splits.test, mean, std, device),
    )


def score(state: JobState, attribution: AttributionSpec, store: StageStore) -> dict[str, torch.Tensor]:
    key = stage_key(
        "scores",
        state.spec.model.model_dump(),
        state.spec.data.model_dump(),
        state.spec.splits.model_dump(),
        state.spec.prune.components,
        state.spec.prune.exclude,
        attribution.model_dump(),
    )
    cached = store.load_tensors(key)
    if cached is not None and set(cached) == {layer.name for layer in state.layers}:
        return cached
    x, y = state.reference
    scores = compute_scores(ScoringContext(state.prepared, state.family, state.layers, x, y), attribution)
    store.save_tensors(key, scores)
    return scores


def curve(
    state: JobState,
    label: str,
    order: PruneOrder,
    split: str,
    store: StageStore,
) -> CurveResult:
    prune = state.spec.prune
    key = stage_key(
        "curve",
        split,
        prune.rates,
        state.spec.model.model_dump(),
        state.spec.data.model_dump(),
        state.spec.splits.model_dump(),
        order.order,
    )
    cached = store.load_json(key)
    if cached is not None:
        return CurveResult.model_validate(cached)
    x, y = state.test if split == "test" else state.search
    accuracies = masked_curve(state.prepared, order, prune.rates, x, y)
    safe = safe_rate(prune.rates, accuracies, prune.max_accuracy_drop)
    keep = order.keep_masks(safe)
    result = CurveResult(
        label=label,
        split="test" if split == "test" else "search",
        components=state.layers[0].kind,
        rates=list(prune.rates),
        accuracies=accuracies,
        unpruned_accuracy=accuracies[0],
        apr=area_under_curve(accuracies),
        safe_rate=safe,
        kept_per_layer={name: int(mask.sum()) for name, mask in keep.items()},
    )
    store.save_json(key, result.model_dump())
    return result


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
) -> JobResult:
    """Run a whole job; artifacts land in ``out_dir`` and are listed in the result."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = StageStore(out_dir)
    units = 3 + 2 * len(spec.criteria) + (spec.search.trials if spec.search else 0) + 2
    report = _Reporter(progress, units)
    started = time.monotonic()

    state = build_state(spec, report)
    curves: list[CurveResult] = []
    orders: dict[str, PruneOrder] = {}
    for attribution in spec.criteria:
        label = attribution.label
        report(f"attribution:{label}", 0, message=f"scoring with {label}")
        scores = score(state, attribution, store)
        report(f"attribution:{label}", 1, message=f"scored with {label}")
        order = state.order(scores)
        orders[label] = order
        result = curve(state, label, order, "test", store)
        curves.append(result)
        report(
            f"curve:{label}", 1, message=f"{label}: A_PR {result.apr:.4f}, safe rate {result.safe_rate:.2f}"
        )

    chosen_spec = spec.criteria[0]
    chosen_label = chosen_spec.label
    search_result = None
    artifacts: dict[str, str] = {}
    if spec.search is not None:
        from pxp.pipeline_search import run_job_search

        report("search", 0, message="tuning the LRP composite")
        search_result, best_curve, default_curve, search_artifacts = run_job_search(
            state, out_dir, store, report, study_storage
        )
        artifacts.update(search_artifacts)
        if not any(c.label == "lrp" and c.accuracies == default_curve.accuracies for c in curves):
            curves.append(default_curve)
        curves.append(best_curve)
        chosen_label = best_curve.label
        best = search_result
        orders[chosen_label] = state.order(
            score(state, _best_attribution(best, chosen_spec), store), normalize=best.best_normalize_per_layer
        )

    chosen_order = orders[chosen_label]
    if spec.prune.rate is not None:
        chosen_rate = spec.prune.rate
    else:
        # The rate is chosen on the search split, so the test split stays an unbiased report.
        search_curve = curve(state, chosen_label, chosen_order, "search", store)
        chosen_rate = search_curve.safe_rate
    report("export", 1, message=f"chosen: {chosen_label} at rate {chosen_rate:.2f}")

    mask_file = out_dir / "mask.json"
    keep = chosen_order.keep_masks(chosen_rate)
    write_json_atomic(
        mask_file,
        {
            "criterion": chosen_label,
            "rate": chosen_rate,
            "achieved_rate": chosen_order.achieved_rate(chosen_rate),
            "kept_indices": {name: torch.nonzero(m).flatten().tolist() for name, m in keep.items()},
        },
    )
    artifacts["mask"] = mask_file.name

    compression = None
    if spec.export.enabled:
        from pxp.pipeline_export import export_job

        compression, export_artifacts = export_job(state, chosen_label, chosen_rate, keep, out_dir, curves)
        artifacts.update(export_artifacts)

    artifacts["curves_png"] = "curves.png"
    artifacts["results"] = "results.json"
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
        search=search_result,
        compression=compression,
        artifacts=artifacts,
    )
    from pxp.report import write_plot

    write_plot(job_result, out_dir / "curves.png")
    write_json_atomic(out_dir / "results.json", job_result.model_dump(mode="json"))
    report("done", units, message=f"finished in {time.monotonic() - started:.1f}s")
    return job_result
