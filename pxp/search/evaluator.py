"""Scoring one trial's configuration, with everything that does not depend on it done once.

Shared across the trials of a search:

- the canonized model (BN merged, residual sums explicit), canonized once on a
  private copy (an explicit-attention ViT needs none and is used as is); a trial
  only registers its rule hooks on it;
- the reference and search tensors, moved to the model's device once;
- the unpruned accuracy (the curve's rate-0 point is the same for every trial);
- relevance scores per composite: one relevance pass yields both the |·| and the
  signed aggregation, so trials that differ only in aggregation or per-layer
  normalisation reuse it; a configuration seen before is not evaluated again.

So a trial costs at most one relevance pass of its own composite (γ, α-β and z+
passes cost more than ε ones) plus one curve without its rate-0 point.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from zennit.core import Composite

from pxp.attribution.engine import backward_signals, batches
from pxp.attribution.lrp import build_composite
from pxp.components import Family, PrunableLayer, aggregate
from pxp.pruning.curve import accuracy, area_under_curve, masked_curve
from pxp.pruning.ranking import rank
from pxp.search.rates import coarse_to_fine, estimated_apr
from pxp.search.space import TrialConfig
from pxp.spec import Aggregation, CompositeSpec

Scores = dict[str, torch.Tensor]
#: Called after each curve point with (step, rate, accuracy, A_PR estimate so far); may raise to stop.
PointCallback = Callable[[int, float, float, float], None]


class SharedCanonization:
    """The prepared model canonized once (on a copy), on which trial composites only add rule hooks.

    The canonizers come from the composite builder itself, so this stays true
    to :func:`pxp.attribution.lrp.build_composite`. If a composite ever brings
    canonizers of other types than the default one (they would depend on the
    trial's parameters), that trial falls back to the builder's own composite on
    the uncanonized model.
    """

    def __init__(self, model: nn.Module, family: Family) -> None:
        self.model = model
        self.family = family
        template = build_composite(model, family, CompositeSpec())
        self._kinds = [type(c) for c in template.canonizers]
        self.canonized = copy.deepcopy(model) if template.canonizers else model
        self._handles = [h for c in template.canonizers for h in c.apply(self.canonized)]

    def composite_for(self, spec: CompositeSpec) -> tuple[Composite, nn.Module]:
        """The composite of ``spec`` and the module to register it on."""
        full = build_composite(self.model, self.family, spec)
        if [type(c) for c in full.canonizers] != self._kinds:
            return full, self.model
        return Composite(module_map=full.module_map), self.canonized


def relevance_scores(
    model: nn.Module,
    composite: Composite,
    layers: list[PrunableLayer],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    aggregations: Iterable[Aggregation],
    batch_size: int,
) -> dict[Aggregation, Scores]:
    """One batched relevance pass, aggregated every way asked for.

    Same numbers as :func:`pxp.attribution.compute_scores` with criterion ``lrp``.
    """
    wanted = tuple(dict.fromkeys(aggregations))
    totals = {
        a: {layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers} for a in wanted
    }
    with composite.context(model) as hooked:
        for part in batches(len(x), batch_size):
            _, relevance = backward_signals(hooked, layers, x[part], y[part])
            for layer in layers:
                for agg in wanted:
                    signed = agg == "signed"
                    totals[agg][layer.name] += aggregate(
                        relevance[layer.name], layer.channel_dim, signed
                    ).cpu()
    return totals


@dataclass
class TrialMeasure:
    """What evaluating one configuration produced."""

    apr: float
    accuracies: dict[float, float]
    relevance_s: float
    curve_s: float
    reused_relevance: bool
    nonfinite_scores: int
    #: The same configuration was evaluated before in this process; nothing was recomputed.
    repeated: bool = False


@dataclass
class TrialEvaluator:
    """Evaluates trial configurations on the search split (see the module docstring for what is shared)."""

    model: nn.Module
    family: Family
    layers: list[PrunableLayer]
    reference: tuple[torch.Tensor, torch.Tensor]
    evaluation: tuple[torch.Tensor, torch.Tensor]
    rates: list[float]
    aggregations: tuple[Aggregation, ...]
    min_keep: int = 1
    batch_size: int = 32
    eval_batch_size: int = 256
    _shared: SharedCanonization = field(init=False)
    _scores: dict[str, dict[Aggregation, Scores]] = field(init=False, default_factory=dict)
    _results: dict[str, TrialMeasure] = field(init=False, default_factory=dict)
    unpruned_accuracy: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.rates or min(self.rates) != 0.0:
            raise ValueError("the rates must include 0.0 (the unpruned point)")
        device = next(self.model.parameters()).device
        self.reference = (self.reference[0].to(device), self.reference[1].to(device))
        self.evaluation = (self.evaluation[0].to(device), self.evaluation[1].to(device))
        self.rates = sorted(self.rates)
        self._order = coarse_to_fine(self.rates)
        self._shared = SharedCanonization(self.model, self.family)
        self.unpruned_accuracy = accuracy(self.model, *self.evaluation, self.eval_batch_size)

    def scores(self, composite: CompositeSpec) -> tuple[dict[Aggregation, Scores], bool]:
        """Scores of every aggregation for ``composite``, and whether they were already known."""
        key = composite.model_dump_json()
        if key in self._scores:
            return self._scores[key], True
        hooks, target = self._shared.composite_for(composite)
        x, y = self.reference
        result = relevance_scores(
            target, hooks, self.layers, x, y, aggregations=self.aggregations, batch_size=self.batch_size
        )
        self._scores[key] = result
        return result, False

    def evaluate(self, config: TrialConfig, on_point: PointCallback | None = None) -> TrialMeasure:
        """The search-split A_PR of ``config``; ``on_point`` sees the coarse-to-fine partial curve."""
        key = config.key()
        if key in self._results:
            return replace(
                self._results[key], relevance_s=0.0, curve_s=0.0, reused_relevance=True, repeated=True
            )
        start = time.perf_counter()
        by_aggregation, reused = self.scores(config.composite)
        scores = by_aggregation[config.aggregation]
        nonfinite = sum(int((~torch.isfinite(s)).sum()) for s in scores.values())
        if nonfinite:
            scores = {name: torch.nan_to_num(s, nan=0.0) for name, s in scores.items()}
        relevance_s = time.perf_counter() - start
        order = rank(
            self.layers, scores, normalize_per_layer=config.normalize_per_layer, min_keep=self.min_keep
        )
        known = {self.rates[0]: self.unpruned_accuracy}

        def point(step: int, rate: float, acc: float) -> None:
            known[rate] = acc
            if on_point is not None:
                on_point(step, rate, acc, estimated_apr(self.rates, known))

        start = time.perf_counter()
        masked_curve(
            self.model, order, self._order, *self.evaluation, batch_size=self.eval_batch_size, on_rate=point
        )
        curve_s = time.perf_counter() - start
        measure = TrialMeasure(
            apr=area_under_curve([known[r] for r in self.rates]),
            accuracies={r: known[r] for r in self.rates},
            relevance_s=relevance_s,
            curve_s=curve_s,
            reused_relevance=reused,
            nonfinite_scores=nonfinite,
        )
        self._results[key] = measure
        return measure
