"""Refine the safe rate between two grid points by bisection over component counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pxp.pruning.ranking import PruneOrder


@dataclass(frozen=True)
class Refinement:
    """The result of :func:`refine_safe_rate`: the refined rate and every extra evaluation made."""

    grid_safe_rate: float
    refined_rate: float
    #: ``(rate, accuracy)`` of each extra evaluation, in the order made.
    evaluations: list[tuple[float, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """JSON form for the job result."""
        return {
            "grid_safe_rate": self.grid_safe_rate,
            "refined_rate": self.refined_rate,
            "evaluations": [list(e) for e in self.evaluations],
        }


def refine_safe_rate(
    order: PruneOrder,
    rates: list[float],
    accuracies: list[float],
    safe: float,
    max_drop: float,
    evaluate: Callable[[float], float],
    *,
    max_steps: int = 6,
) -> Refinement:
    """Bisect between the grid safe rate and the next grid rate for the largest rate within ``max_drop``.

    ``rates`` / ``accuracies`` are the grid curve (``accuracies`` at rate 0 is the
    baseline) and ``safe`` its safe rate; ``evaluate(rate)`` returns the accuracy at
    a rate on the same split with the same masks (and recovery) as the grid curve.
    Bisection works on component counts, so every evaluated rate is one that
    :meth:`PruneOrder.keep_masks` realises exactly; it stops after ``max_steps``
    evaluations or when the bracket is one component wide. Between the two grid
    points the curve is assumed monotone (the refined rate is the last passing
    midpoint, so every lower grid point and every passing midpoint are within
    ``max_drop``).
    """
    above = [r for r in sorted(rates) if r > safe]
    result = Refinement(grid_safe_rate=safe, refined_rate=safe)
    if not above or max_steps <= 0:
        return result
    base = accuracies[rates.index(0.0)] if 0.0 in rates else accuracies[0]
    lo, hi = order.count_for_rate(safe), order.count_for_rate(above[0])
    evaluations: list[tuple[float, float]] = []
    for _ in range(max_steps):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        rate = mid / order.total
        acc = evaluate(rate)
        evaluations.append((rate, acc))
        if acc >= base - max_drop - 1e-12:
            lo = mid
        else:
            hi = mid
    refined = max(safe, lo / order.total) if lo > order.count_for_rate(safe) else safe
    return Refinement(grid_safe_rate=safe, refined_rate=refined, evaluations=evaluations)
