"""A stand-in for ``pxp.pipeline.run`` with the same signature, scripted by the spec.

It lets the worker plumbing (claims, progress, cancel, error kinds, artifact upload,
worker loss, resume) be tested with a real Celery worker in seconds; the real pipeline
is exercised by tests/e2e. ``spec.model.kwargs`` selects the behaviour:

* ``script``: ``succeed`` | ``user_error`` | ``crash`` | ``exit_once`` (kill the worker
  process on the first attempt, succeed on the next, resuming finished stages)
* ``steps`` (default 3) and ``delay`` seconds per step (default 0.05)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from pxp.errors import InvalidModelError
from pxp.spec import CurveResult, JobResult, JobSpec, ProgressEvent


def _sha(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(
    spec: JobSpec,
    out_dir: Path,
    progress: Callable[[ProgressEvent], None] | None = None,
    *,
    study_storage: str | None = None,
) -> JobResult:
    kw = spec.model.kwargs
    script = kw.get("script", "succeed")
    steps = int(kw.get("steps", 3))
    delay = float(kw.get("delay", 0.05))
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = out_dir / ".stages"
    stages.mkdir(exist_ok=True)
    attempts_file = out_dir / "attempts.txt"
    attempts = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
    attempts_file.write_text(str(attempts))
    resumed = sorted(p.name for p in stages.iterdir())
    for i in range(steps):
        done = stages / f"stage{i}"
        if progress is not None:
            progress(ProgressEvent(stage=f"stage{i}", fraction=i / steps, message=f"step {i}", trial=i))
        if done.exists():
            continue
        time.sleep(delay)
        if i == 1 and script == "user_error":
            raise InvalidModelError("state_dict does not fit digits_vgg: missing key 'features.0.weight'")
        if i == 1 and script == "crash":
            raise RuntimeError("scripted internal failure")
        if i == 1 and script == "exit_once" and attempts == 1:
            os._exit(17)
        done.write_text("ok")
    if progress is not None:
        progress(ProgressEvent(stage="export", fraction=1.0))
    (out_dir / "model.safetensors").write_bytes(b"weights-" + spec.model.architecture.encode())
    inputs = {
        "weights": spec.model.weights,
        "weights_sha256": _sha(spec.model.weights),
        "data": spec.data.source,
        "data_sha256": _sha(spec.data.source),
        "study_storage": study_storage,
        "study_name": spec.search.study_name if spec.search else None,
        "attempts": attempts,
        "resumed": resumed,
    }
    (out_dir / "results.json").write_text(json.dumps(inputs))
    curve = CurveResult(
        label="lrp",
        components="filters",
        rates=[0.0, 0.5],
        accuracies=[0.9, 0.8],
        unpruned_accuracy=0.9,
        apr=0.85,
        safe_rate=0.0,
    )
    return JobResult(
        architecture=spec.model.architecture,
        family="cnn",
        num_classes=2,
        class_names=["a", "b"],
        split_sizes={"reference": 2, "search": 2, "test": 2},
        curves=[curve],
        chosen_label="lrp",
        chosen_rate=0.5,
        artifacts={"model.safetensors": "model.safetensors", "results.json": "results.json"},
    )
