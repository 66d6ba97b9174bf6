"""A whole compression job from a JobSpec, one module per stage.

``run`` is the entry point (``pxp compress`` and the worker call it). The stage
modules depend downward only: ``reporter`` and ``state`` at the bottom, then
``scoring`` and ``budget`` (recovery, rate refinement), then ``curves``, then ``search`` and ``export``, then ``job`` (``run``).
"""

from pxp.pipeline.curves import curve
from pxp.pipeline.job import run
from pxp.pipeline.reporter import ProgressCallback, Reporter, silent
from pxp.pipeline.scoring import score
from pxp.pipeline.state import JobState, build_state, resolve_device

__all__ = [
    "JobState",
    "ProgressCallback",
    "Reporter",
    "build_state",
    "curve",
    "resolve_device",
    "run",
    "score",
    "silent",
]
