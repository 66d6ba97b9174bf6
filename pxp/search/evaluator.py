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
passes cost more than ε ones) plus one curve without its rate-0 point, evaluated
by :func:`pxp.pruning.evaluate.evaluate_curve` (the fast sweep where it is exact)
with a removal planner built once per search.

**Scoring what is exported.** With ``recovery`` (the job's ``prune.recovery``), every
curve point, the rate-0 one included, is the masked *and recovered* model, as the
pipeline's curves and the export evaluate it (:func:`evaluate_curve` with recovery:
staged least-squares captures, bitwise the unstaged numbers); with ``ranker`` the
trial's scores are ranked as the job ranks them (coupled groups, cost exponent).

**Exact early stopping.** ``evaluate(config, beat=v)`` stops the curve, raising
:class:`CannotBeat`, as soon as the trial's A_PR can no longer exceed ``v`` even
if every rate not yet evaluated scored accuracy 1.0. That bound is the only one
valid without assumptions: the unpruned accuracy is not an upper bound, since a
pruned model can classify a finite split *better* than the unpruned one (a
removed component may have pushed a few samples to a wrong class). A_PR is the
mean of the accuracies, so the bound is (Σ known + (n − known) · 1.0) / n; a
margin of 1e-9 (far below the 1/N granularity of an accuracy) keeps float
rounding from ever stopping a trial that would have tied or won. The highest
rates have the lowest accuracies and, sliced, cost least, so without median
pruning the rates are evaluated from the highest down: the bound falls fastest,
and the expensive low rates are the ones skipped.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn
from zennit.core import Composite

from pxp.attribution.engine import backward_signals, batches
from pxp.attribution.lrp import build_composite
from pxp.attribution.memory import fit_batch_size
from pxp.components import Family, PrunableLayer, aggregate
from pxp.pruning.curve import accuracy, area_under_curve
from pxp.pruning.evaluate import CurveMethod, evaluate_curve, make_planner
from pxp.pruning.ranking import PruneOrder, rank
from pxp.pruning.recovery import Recovery
from pxp.pruning.removal.plan import Planner
from pxp.search.rates import coarse_to_fine, estimated_apr
from pxp.search.space import TrialConfig
from pxp.spec import Aggregation, CompositeSpec

Scores = dict[str, torch.Tensor]
#: Called after each curve point with (step, rate, accuracy, A_PR estimate so far); may raise to stop.
PointCallback = Callable[[int, float, float, float], None]
#: The order a trial's rates are evaluated in (see the module docstring).
RateOrder = Literal["coarse_to_fine", "descending"]
#: ``ranker(scores, normalize_per_layer) -> order``: how the job ranks scores (default: :func:`rank`).
Ranker = Callable[[Scores, bool], PruneOrder]
#: A trial is stopped only when its A_PR bound is below the value to beat by more than this.
BOUND_MARGIN = 1e-9


class CannotBeat(Exception):
    """The partial curve proves the trial's A_PR cannot exceed the value it had to beat."""

    def __init__(self, step: int, bound: float, beat: float, estimate: float) -> None:
        super().__init__(f"A_PR ≤ {bound:.6f} after {step + 1} rates, cannot beat {beat:.6f}")
        self.step, self.bound, self.beat, self.estimate = step, bound, beat, estimate


def apr_upper_bound(rates: list[float], known: dict[float, float]) -> float:
    """The largest A_PR the curve can still reach: every rate not in ``known`` at accuracy 1.0."""
    return (sum(known[r] for r in rates if r in known) + sum(1.0 for r in rates if r not in known)) / len(
        rates
    )


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
    #: :meth:`~pxp.pruning.ranking.PruneOrder.mask_key` of the order the curve evaluated.
    mask_key: tuple[object, ...] | None = None


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
    #: "auto": the fast sweep where exact; "masked": the reference (to benchmark against).
    curve_method: CurveMethod = "auto"
    rate_order: RateOrder = "coarse_to_fine"
    #: The job's recovery: curves score the recovered model, as exported (None: plain masks).
    recovery: Recovery | None = None
    #: The job's ranking (coupled groups, cost exponent); None: :func:`rank` with ``min_keep``.
    ranker: Ranker | None = None
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
        self._order = (
            coarse_to_fine(self.rates)
            if self.rate_order == "coarse_to_fine"
            else sorted(self.rates[1:])[::-1]
        )
        self._planner: Planner | None = None
        self._planned = False
        self._shared = SharedCanonization(self.model, self.family)
        if self.recovery is not None and self.recovery.enabled:
            unpruned = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in self.layers}
            with self.recovery.applied(unpruned) as recovered:
                self.unpruned_accuracy = accuracy(recovered, *self.evaluation, self.eval_batch_size)
        else:
            self.unpruned_accuracy = accuracy(self.model, *self.evaluation, self.eval_batch_size)
        # Lowered where one relevance batch would not fit the free memory (measured once per search).
        self.batch_size = fit_batch_size(self.model, self.reference[0], self.batch_size)

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

    def planner(self) -> Planner | None:
        """The removal planner for the fast sweep, built on first use and shared by every trial."""
        # A recovery that changes nothing on this model (a ViT's) leaves the curve a masked one.
        recovering = self.recovery is not None and not self.recovery.changes_nothing
        if not self._planned and self.curve_method == "auto" and not recovering:
            self._planner = make_planner(self.model, self.family, self.layers, self.evaluation[0])
            self._planned = True
        return self._planner

    def evaluate(
        self, config: TrialConfig, on_point: PointCallback | None = None, *, beat: float | None = None
    ) -> TrialMeasure:
        """The search-split A_PR of ``config``; ``on_point`` sees the partial curve after each rate.

        With ``beat``, raises :class:`CannotBeat` (after ``on_point`` saw the rate that
        proved it) once the A_PR cannot exceed ``beat`` (see the module docstring).
        """
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
        if self.ranker is not None:
            order = self.ranker(scores, config.normalize_per_layer)
        else:
            order = rank(
                self.layers, scores, normalize_per_layer=config.normalize_per_layer, min_keep=self.min_keep
            )
        known = {self.rates[0]: self.unpruned_accuracy}

        def point(step: int, rate: float, acc: float) -> None:
            known[rate] = acc
            estimate = estimated_apr(self.rates, known)
            if on_point is not None:
                on_point(step, rate, acc, estimate)
            if beat is not None and len(known) < len(self.rates):
                bound = apr_upper_bound(self.rates, known)
                if bound + BOUND_MARGIN < beat:
                    raise CannotBeat(step, bound, beat, estimate)

        start = time.perf_counter()
        evaluate_curve(
            self.model,
            order,
            self._order,
            *self.evaluation,
            batch_size=self.eval_batch_size,
            on_rate=point,
            method=self.curve_method,
            planner=self.planner(),
            recovery=self.recovery,
        )
        curve_s = time.perf_counter() - start
        measure = TrialMeasure(
            apr=area_under_curve([known[r] for r in self.rates]),
            accuracies={r: known[r] for r in self.rates},
            relevance_s=relevance_s,
            curve_s=curve_s,
            reused_relevance=reused,
            nonfinite_scores=nonfinite,
            mask_key=order.mask_key(),
        )
        self._results[key] = measure
        return measure

    def known(self, config: TrialConfig) -> tuple[Scores | None, TrialMeasure | None]:
        """What this evaluator already computed for ``config``: its scores and its complete curve.

        The scores are those of ``config``'s aggregation as the relevance pass produced
        them (non-finite values included, as :func:`pxp.attribution.compute_scores`
        returns them); the measure only when the configuration's curve was evaluated in
        full here. ``None`` for what was not computed in this process.
        """
        by_aggregation = self._scores.get(config.composite.model_dump_json())
        scores = by_aggregation[config.aggregation] if by_aggregation is not None else None
        return scores, self._results.get(config.key())
