"""Coarse-to-fine evaluation of a pruning curve, so a partial curve already estimates A_PR.

Median pruning compares trials on partial curves. Evaluating the rates in
ascending order would compare only the flat, uninformative start of the curves;
evaluating the highest rate first and then bisecting gives, after every step, a
piecewise-linear sketch of the whole curve whose mean is a fair A_PR estimate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np


def coarse_to_fine(rates: Sequence[float]) -> list[float]:
    """The rates other than the first (the unpruned point), last first, then by bisection.

    >>> coarse_to_fine([0.0, 0.1, 0.2, 0.3, 0.4])
    [0.4, 0.2, 0.1, 0.3]
    """
    ordered = sorted(rates)
    last = len(ordered) - 1
    if last < 1:
        return []
    picks = [last]
    queue = deque([(0, last)])
    while queue:
        low, high = queue.popleft()
        mid = (low + high) // 2
        if mid in (low, high):
            continue
        picks.append(mid)
        queue.extend([(low, mid), (mid, high)])
    return [ordered[i] for i in picks]


def estimated_apr(rates: Sequence[float], known: Mapping[float, float]) -> float:
    """Mean over ``rates`` of the accuracies in ``known``, linearly interpolated where missing.

    Exact (the A_PR) once every rate is known.
    """
    points = sorted(known.items())
    xs = [r for r, _ in points]
    ys = [a for _, a in points]
    return float(np.mean(np.interp(sorted(rates), xs, ys)))
