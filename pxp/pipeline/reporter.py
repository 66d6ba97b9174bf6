"""Progress of a job: stage-local units mapped onto one monotone fraction."""

from __future__ import annotations

from collections.abc import Callable

from pxp.spec import ProgressEvent

ProgressCallback = Callable[[ProgressEvent], None]


class Reporter:
    """Maps stage-local progress onto one monotone job fraction.

    Each call adds ``units`` of done work (out of ``total_units``) and forwards a
    :class:`~pxp.spec.ProgressEvent` to the callback. The callback may raise
    :class:`~pxp.errors.JobCancelledError` to stop the job between steps.
    """

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


def silent() -> Reporter:
    """A reporter that reports nowhere (benchmarks, tests)."""
    return Reporter(None, 1)
