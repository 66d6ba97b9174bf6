"""The one pruning-curve function the product uses: the fastest exact method for the model at hand.

:func:`evaluate_curve` returns, for every rate, the top-1 accuracy of the model
with that rate's nested masks, exactly as :func:`pxp.pruning.curve.masked_curve`
defines it. It picks how:

- **fast** (:func:`pxp.pruning.fast_curve.fast_curve`): each rate on the
  physically sliced model, reusing the unchanged prefix's activations. Its
  self-check and its per-batch tie fallback keep the accuracies identical to
  masking;
- **masked** (:func:`~pxp.pruning.curve.masked_curve`): the reference, used when
  the fast sweep is not exact or not possible for this model (its self-check
  refuses, the model cannot be planned or sliced, or it fails for any other
  reason), when the caller asks for it (``method="masked"``), or when a per-rate
  ``transform`` changes the evaluated model beyond a plain mask.

With **recovery** (``recovery=``, a :class:`~pxp.pruning.recovery.Recovery` with
methods that change something on this model: a ViT has no channel groups to fold or refit
and no BatchNorm, so there recovery is masking and the plain methods above apply), every
rate is the masked *and recovered* model, exactly as
:func:`pxp.pruning.recovery.recovered_curve` defines it; the fastest exact method is
``"recovered-staged"``: least squares' reference captures run staged (each stops at
its consumer and resumes from the deepest cut the previous one passed; bitwise the
same refits), and a rate whose masks equal the previous rate's reuses its accuracy.
The sliced fast sweep is not used there: its float32 summation order differs from
the masked model's, and a recovery fitted on the sliced model would refit different
numbers (least squares, BN statistics), so its accuracies would not be the masked
recovered model's; and most of a recovered rate's cost is the recovery's reference
passes, which slicing the evaluation would not remove. ``method="masked"`` with
recovery is the unstaged reference (the old path).

A fast sweep that fails part-way hands the remaining rates to masking: rates
already reported through ``on_rate`` are not evaluated twice, and exceptions
raised *by* ``on_rate`` (an Optuna ``TrialPruned``, a cancellation) propagate
unchanged and are never taken for a failure of the method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from pxp.components import Family, PrunableLayer
from pxp.pruning.curve import accuracy
from pxp.pruning.fast_curve import SweepStats, fast_curve
from pxp.pruning.masking import masked
from pxp.pruning.ranking import PruneOrder
from pxp.pruning.recovery import Recovery
from pxp.pruning.removal import removal_planner
from pxp.pruning.removal.plan import Planner

log = logging.getLogger(__name__)

#: ``"auto"``: fast where exact, else masked. ``"masked"``: always the reference (benchmarks, debugging).
CurveMethod = Literal["auto", "masked"]
#: Per rate: ``(model with the rate's masks applied, keep masks) -> the module to evaluate``.
RateTransform = Callable[[nn.Module, dict[str, torch.Tensor]], nn.Module]
#: ``on_rate(index in rates, rate, accuracy)``, after each rate; it may raise to stop the curve.
RateCallback = Callable[[int, float, float], None]


@dataclass
class CurveInfo:
    """How :func:`evaluate_curve` computed a curve (for benchmarks and logs)."""

    #: Per rate (in the order given): "fast", "masked", "recovered-staged" or "recovered"
    #: (suffixed "(repeat)" where the masks equal the previous rate's and the accuracy was reused).
    methods: list[str] = field(default_factory=list)
    #: Why the fast sweep was not used (or stopped), if it was not.
    fallback_reason: str | None = None
    sweep: SweepStats = field(default_factory=SweepStats)


class _CallbackError(Exception):
    """Carries an exception raised by the caller's ``on_rate`` through the fast sweep untouched."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def family_of(order: PruneOrder) -> Family:
    """The model family an order's components belong to (conv filters: CNN; neurons and heads: ViT)."""
    return "cnn" if order.layers[0].kind == "filters" else "vit"


def make_planner(
    model: nn.Module, family: Family, layers: list[PrunableLayer], example: torch.Tensor
) -> Planner | None:
    """A removal planner for ``layers`` of ``model``, or None where none can be built.

    Built once and passed to :func:`evaluate_curve`, it saves each later call the
    dependency analysis; None tells :func:`evaluate_curve` to use masking.
    """
    try:
        return removal_planner(model, family, layers, example[:1])
    except Exception as exc:  # any model the planner cannot analyse is evaluated by masking
        log.info("no removal planner for this model (%s: %s); curves use masking", type(exc).__name__, exc)
        return None


def _masked_rates(
    model: nn.Module,
    order: PruneOrder,
    rates: list[float],
    indices: list[int],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    transform: RateTransform | None,
    report: Callable[[int, float, float, str], None],
) -> None:
    layers = list(order.layers)
    for i in indices:
        keep = order.keep_masks(rates[i])
        with masked(model, layers, keep):
            evaluated = transform(model, keep) if transform is not None else model
            acc = accuracy(evaluated, x, y, batch_size)
        report(i, rates[i], acc, "masked")


def _recovered_rates(
    recovery: Recovery,
    order: PruneOrder,
    rates: list[float],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    staged: bool,
    report: Callable[[int, float, float, str], None],
) -> None:
    how = "recovered-staged" if staged else "recovered"
    previous: dict[str, torch.Tensor] | None = None
    last = 0.0
    was = recovery.staged
    recovery.staged = staged
    try:
        for i, rate in enumerate(rates):
            keep = order.keep_masks(rate)
            if staged and previous is not None and all(torch.equal(keep[n], previous[n]) for n in keep):
                # Same masks, same recovered model (recovery is deterministic): same accuracy.
                report(i, rate, last, f"{how} (repeat)")
                continue
            with recovery.applied(keep) as model:
                last = accuracy(model, x, y, batch_size)
            previous = keep
            report(i, rate, last, how)
    finally:
        recovery.staged = was


def evaluate_curve(
    model: nn.Module,
    order: PruneOrder,
    rates: list[float],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 256,
    on_rate: RateCallback | None = None,
    transform: RateTransform | None = None,
    method: CurveMethod = "auto",
    planner: Planner | Literal["build"] | None = "build",
    info: CurveInfo | None = None,
    recovery: Recovery | None = None,
) -> list[float]:
    """Top-1 accuracy at each rate (evaluated in the order given), identical to ``masked_curve``.

    Args:
        model: the prepared model (:func:`pxp.components.prepare_model`), in eval mode.
        order: the global pruning order; its masks are nested across rates.
        rates: the rates, evaluated and reported in this order.
        x, y: the evaluation split.
        batch_size: evaluation batch size (the masked reference's batches; ties are
            resolved in exactly these batches).
        on_rate: called after each rate with ``(index in rates, rate, accuracy)``;
            whatever it raises propagates (that is how a search prunes a trial).
        transform: a per-rate model hook for evaluations that are more than a mask
            (e.g. recovery: BN re-estimation, bias folding, reconstruction). It is
            called with ``model`` while the rate's masks are applied (as forward
            hooks, which :func:`copy.deepcopy` carries along) and the keep masks, and
            returns the module to evaluate, in eval mode: a modified copy (``model``
            itself only if it changes nothing that would outlive the rate). Giving one
            forces the masked path: the fast sweep's slicing and reuse assume the
            evaluated model is exactly the masked one.
        method: ``"auto"`` (fast where exact, else masked) or ``"masked"``.
        planner: a planner from :func:`make_planner` to reuse across calls; ``None``
            (no planner could be built) means masked; ``"build"`` builds one here.
        info: filled with which method evaluated each rate and why the fast one was not used.
        recovery: evaluate every rate masked and recovered by it (see the module
            docstring); ``None`` or one without methods: plain masks. Not combinable
            with ``transform``.
    """
    info = info if info is not None else CurveInfo()
    info.methods = [""] * len(rates)
    accuracies: list[float | None] = [None] * len(rates)

    def report(i: int, rate: float, acc: float, how: str) -> None:
        accuracies[i] = acc
        info.methods[i] = how
        if on_rate is not None:
            on_rate(i, rate, acc)

    if recovery is not None and recovery.enabled and transform is not None:
        raise ValueError("give either a recovery or a transform, not both")
    if recovery is not None and recovery.enabled and not recovery.changes_nothing:
        if method != "auto":
            info.fallback_reason = f"method={method!r}"
        _recovered_rates(recovery, order, rates, x, y, batch_size, method == "auto", report)
        return [float(acc) for acc in accuracies if acc is not None]

    def fast_report(i: int, rate: float, acc: float) -> None:
        try:
            report(i, rate, acc, "fast")
        except BaseException as exc:
            raise _CallbackError(exc) from exc

    use_fast = method == "auto" and transform is None and len(rates) > 0
    if not use_fast:
        info.fallback_reason = "transform given" if transform is not None else f"method={method!r}"
    if use_fast and planner == "build":
        planner = make_planner(model, family_of(order), list(order.layers), x)
    if use_fast and planner is None:
        use_fast, info.fallback_reason = False, "no removal planner for this model"
    if use_fast:
        assert planner is not None and planner != "build"
        try:
            fast_curve(
                model,
                order,
                rates,
                x,
                y,
                batch_size=batch_size,
                planner=planner,
                on_rate=fast_report,
                stats=info.sweep,
            )
        except _CallbackError as wrapped:
            raise wrapped.error from None
        except Exception as exc:  # the reference below is always exact; say why it was needed
            info.fallback_reason = f"{type(exc).__name__}: {exc}"
            log.info("fast curve not used for the remaining rates: %s", info.fallback_reason)
    remaining = [i for i, acc in enumerate(accuracies) if acc is None]
    if remaining:
        _masked_rates(model, order, rates, remaining, x, y, batch_size, transform, report)
    return [float(acc) for acc in accuracies if acc is not None]
