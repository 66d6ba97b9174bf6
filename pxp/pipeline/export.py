"""The export stage of a job: remove the pruned components, verify, measure and write the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pxp.pipeline.budget import removed
from pxp.pipeline.state import JobState
from pxp.pruning.cost import count_cost, removed_fractions
from pxp.pruning.curve import accuracy
from pxp.pruning.export import export_compressed
from pxp.pruning.latency import latency_summary, measure_latency

VERIFY_SAMPLES = 64


@dataclass(frozen=True)
class ExportOutcome:
    """What the export stage produced: the summary for the job result and the files written."""

    summary: dict[str, Any]
    artifacts: dict[str, str]
    params_removed_fraction: float
    flops_removed_fraction: float


def export_job(
    state: JobState,
    label: str,
    rate: float,
    keep: dict[str, torch.Tensor],
    out_dir: Path,
    unpruned: float,
    provenance: dict[str, Any] | None = None,
) -> ExportOutcome:
    """Physically remove what ``keep`` prunes, check it against masking, export it.

    ``unpruned`` is the unpruned test accuracy the drop is reported against. The
    test accuracy reported is the *removed* model's own, measured here.
    """
    x_test, y_test = state.test
    removal = removed(state, keep, x_test[:VERIFY_SAMPLES])
    input_shape = tuple(x_test.shape[1:])
    before = count_cost(state.prepared, input_shape)
    after = count_cost(removal.model, input_shape)
    fractions = removed_fractions(before, after)
    test_accuracy = accuracy(removal.model, x_test, y_test)
    summary: dict[str, Any] = {
        "criterion": label,
        "rate": rate,
        "params_before": before.params,
        "params_after": after.params,
        "macs_before": before.macs,
        "macs_after": after.macs,
        **fractions,
        "components_removed": removal.removed_components,
        "components_zeroed": removal.zeroed_components,
        "unpruned_test_accuracy": unpruned,
        "test_accuracy": test_accuracy,
        "accuracy_drop": unpruned - test_accuracy,
        "verification_max_abs_diff": removal.max_abs_diff,
        "verification_tolerance": removal.tolerance,
        "recovery": list(state.spec.prune.recovery),
    }
    if state.spec.export.measure_latency:
        points = measure_latency(state.prepared, removal.model, input_shape, state.device)
        summary["latency"] = latency_summary(points, state.device)
    attribution = next(
        (a.model_dump(mode="json") for a in state.spec.criteria if a.label == label),
        {"criterion": label},
    )
    paths = export_compressed(
        out_dir,
        removal,
        x_test[:VERIFY_SAMPLES].cpu(),
        architecture=state.spec.model.architecture,
        family=state.family,
        kwargs=state.loaded.kwargs,
        class_names=state.data.class_names,
        attribution=attribution,
        metrics=summary,
        formats=state.spec.export.formats,
        rate=rate,
        provenance=provenance,
    )
    return ExportOutcome(
        summary=summary,
        artifacts={name: Path(path).name for name, path in paths.items()},
        params_removed_fraction=fractions["params_removed_fraction"],
        flops_removed_fraction=fractions["flops_removed_fraction"],
    )
