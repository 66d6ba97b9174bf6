"""Explanations shipped with a compressed model: why each layer kept what it kept.

* LRP input heatmaps of a few reference images per class, from the unpruned and
  from the pruned (masked at the exported rate) model, with the same composite:
  the chosen LRP composite when the job chose LRP, the default ε composite otherwise.
* Per-layer statistics of the chosen ranking: the kept fraction at the exported
  rate and the distribution (quantiles) of the scores that decided it.

Plain data goes to ``explanations.json``; two PNGs draw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pxp.attribution.lrp import build_composite
from pxp.pipeline.state import JobState
from pxp.pruning.masking import masked
from pxp.spec import AttributionSpec

EXPLANATIONS_JSON = "explanations.json"
HEATMAPS_PNG = "heatmaps.png"
LAYERS_PNG = "layers.png"


@dataclass(frozen=True)
class Heatmaps:
    """Reference images (model input space) and their input relevance before and after pruning."""

    indices: list[int]
    labels: list[int]
    images: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor


def pick_per_class(labels: torch.Tensor, per_class: int) -> list[int]:
    """Positions of the first ``per_class`` samples of every class, in class order."""
    picked: list[int] = []
    for cls in sorted(set(labels.tolist())):
        picked.extend(torch.nonzero(labels == cls).flatten()[:per_class].tolist())
    return picked


def input_relevance(
    state: JobState, attribution: AttributionSpec, x: torch.Tensor, y: torch.Tensor, keep: dict | None
) -> torch.Tensor:
    """LRP relevance at the input pixels (summed over channels), from the ground-truth logit."""
    composite = build_composite(state.prepared, state.family, attribution.effective_composite())
    x = x.detach().clone().requires_grad_(True)
    with composite.context(state.prepared) as model:
        if keep is None:
            logits = model(x)
        else:
            with masked(model, state.layers, keep):
                logits = model(x)
        one_hot = torch.nn.functional.one_hot(y, logits.shape[-1]).to(logits.dtype)
        logits.backward(gradient=one_hot)
    assert x.grad is not None
    return x.grad.detach().sum(1).cpu()


def heatmaps(
    state: JobState, attribution: AttributionSpec, keep: dict[str, torch.Tensor], per_class: int = 1
) -> Heatmaps:
    """Input heatmaps of ``per_class`` reference images per class, unpruned and pruned by ``keep``."""
    if attribution.criterion != "lrp":
        attribution = AttributionSpec(criterion="lrp")
    x_ref, y_ref = state.reference
    picked = pick_per_class(y_ref.cpu(), per_class)
    x, y = x_ref[picked], y_ref[picked]
    return Heatmaps(
        indices=[int(state.splits.reference[i]) for i in picked],
        labels=y.cpu().tolist(),
        images=x.detach().cpu(),
        before=input_relevance(state, attribution, x, y, None),
        after=input_relevance(state, attribution, x, y, keep),
    )


def layer_statistics(
    state: JobState, scores: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]
) -> list[dict[str, Any]]:
    """Per prunable layer: size, kept count and fraction, and the quantiles of its scores."""
    rows = []
    for layer in state.layers:
        values = scores[layer.name].double().flatten()
        q = torch.quantile(values, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
        kept = int(keep[layer.name].sum())
        rows.append(
            {
                "layer": layer.name,
                "kind": layer.kind,
                "size": layer.size,
                "kept": kept,
                "kept_fraction": kept / layer.size,
                "score_sum": float(values.sum()),
                "score_quantiles": [float(v) for v in q],
            }
        )
    return rows


def write_explanations(
    state: JobState,
    out_dir: Path,
    *,
    attribution: AttributionSpec,
    scores: dict[str, torch.Tensor],
    keep: dict[str, torch.Tensor],
    rate: float,
    per_class: int = 1,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the JSON and the PNGs; return (artifact name → file name, the JSON's record).

    Heatmaps need a faithful LRP: on a family where pxp refuses LRP (see
    :mod:`pxp.attribution.support`) they are left out and the JSON says why.
    """
    import json

    from pxp.attribution.support import lrp_blockers

    stats = layer_statistics(state, scores, keep)
    written = {"explanations": EXPLANATIONS_JSON, "layers_png": LAYERS_PNG}
    blockers = lrp_blockers(state.prepared, state.family)
    if blockers:
        record: dict[str, Any] = {
            "rate": rate,
            "heatmaps_skipped": f"LRP is not faithful on this model ({'; '.join(blockers)})",
            "layers": stats,
        }
        (out_dir / EXPLANATIONS_JSON).write_text(json.dumps(record, indent=1, allow_nan=False))
        _plot_layers(stats, rate, out_dir / LAYERS_PNG)
        return written, record
    maps = heatmaps(state, attribution, keep, per_class)
    record = {
        "rate": rate,
        "heatmap_composite": (
            attribution.effective_composite().model_dump(mode="json")
            if attribution.criterion == "lrp"
            else "default epsilon (the job chose a non-LRP criterion)"
        ),
        "heatmap_samples": [
            {"index": i, "label": state.data.class_names[c]}
            for i, c in zip(maps.indices, maps.labels, strict=True)
        ],
        "heatmap_change": [
            float(torch.nn.functional.cosine_similarity(b.flatten(), a.flatten(), dim=0))
            for b, a in zip(maps.before, maps.after, strict=True)
        ],
        "layers": stats,
    }
    (out_dir / EXPLANATIONS_JSON).write_text(json.dumps(record, indent=1, allow_nan=False))
    _plot_heatmaps(maps, state.data.class_names, out_dir / HEATMAPS_PNG)
    _plot_layers(stats, rate, out_dir / LAYERS_PNG)
    return {**written, "heatmaps_png": HEATMAPS_PNG}, record


def _plot_heatmaps(maps: Heatmaps, class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(maps.indices)
    fig, axes = plt.subplots(n, 3, figsize=(5.4, 1.8 * n), dpi=100, squeeze=False)
    for row in range(n):
        image = maps.images[row]
        shown = image.permute(1, 2, 0) if image.shape[0] == 3 else image[0]
        shown = (shown - shown.min()) / (shown.max() - shown.min() + 1e-12)
        bound = max(float(maps.before[row].abs().max()), float(maps.after[row].abs().max()), 1e-12)
        panels = [
            (shown, "gray", None, f"{class_names[maps.labels[row]]} (#{maps.indices[row]})"),
            (maps.before[row], "bwr", bound, "relevance, unpruned"),
            (maps.after[row], "bwr", bound, "relevance, pruned"),
        ]
        for col, (data, cmap, limit, title) in enumerate(panels):
            ax = axes[row][col]
            if limit is None:
                ax.imshow(data.numpy(), cmap=cmap)
            else:
                ax.imshow(data.numpy(), cmap=cmap, vmin=-limit, vmax=limit)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_layers(stats: list[dict[str, Any]], rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["layer"] for row in stats]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 5.2), dpi=100, sharex=True)
    top.bar(range(len(stats)), [row["kept_fraction"] for row in stats], color="tab:blue")
    top.set_ylabel("kept fraction")
    top.set_ylim(0, 1.02)
    top.set_title(f"per-layer kept fraction at rate {rate:.2f} and the scores that decided it", fontsize=9)
    quantiles = [row["score_quantiles"] for row in stats]
    bottom.vlines(range(len(stats)), [q[0] for q in quantiles], [q[4] for q in quantiles], color="grey")
    bottom.vlines(range(len(stats)), [q[1] for q in quantiles], [q[3] for q in quantiles], linewidth=5)
    bottom.plot(range(len(stats)), [q[2] for q in quantiles], "k_", markersize=8)
    bottom.set_ylabel("component score")
    positive = all(q[0] > 0 for q in quantiles)
    if positive:
        bottom.set_yscale("log")
    bottom.set_xticks(range(len(stats)))
    bottom.set_xticklabels(names, rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
