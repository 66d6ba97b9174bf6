"""Child process for test_resume: runs a search and SIGKILLs itself in the middle of a trial.

Usage: ``python -m tests.pxp.search.kill_child STORAGE STUDY TRIALS KILL_AFTER``. Once
KILL_AFTER trials have finished, the next forward pass through the model kills the
process, which leaves that trial RUNNING in the storage, as a crash or OOM kill would.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from pxp.search import run_search
from pxp.spec import PruneSpec, SearchSpec
from pxp.zoo import TINY_KWARGS, load_zoo_model
from tests.pxp.search.conftest import RATES, make_bed


def main() -> None:
    storage, study, trials, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    model, _ = load_zoo_model("digits_vgg", TINY_KWARGS["digits_vgg"])
    bed = make_bed(model, "digits_vgg")
    armed = False

    def arm(done: int, _total: int, _best: float | None) -> None:
        nonlocal armed
        armed = done >= kill_after

    def kill_if_armed(*_: object) -> None:
        if armed:
            os.kill(os.getpid(), signal.SIGKILL)

    bed.model.register_forward_hook(kill_if_armed)
    run_search(
        model=bed.model,
        family="cnn",
        layers=bed.layers,
        reference=bed.reference,
        search_split=bed.search,
        prune=PruneSpec(rates=RATES),
        spec=SearchSpec(trials=trials, seed=3),
        storage=storage,
        study_name=study,
        progress=arm,
    )


if __name__ == "__main__":
    main()
