from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from pxp.search import default_storage_url, run_search
from pxp.spec import PruneSpec, SearchSpec
from tests.pxp.search.conftest import RATES, Bed

ROOT = Path(__file__).resolve().parents[3]


def test_a_study_killed_mid_trial_resumes_with_its_finished_trials(vgg: Bed, tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    child = subprocess.run(
        [sys.executable, "-m", "tests.pxp.search.kill_child", url, "job-7", "5", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    killed = optuna.load_study(study_name="job-7", storage=url)
    # The seeds not reached yet wait in the queue.
    started = [t.state for t in killed.trials if t.state != TrialState.WAITING]
    assert started == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    finished = [(t.number, t.params, t.value) for t in killed.trials[:2]]
    interrupted = killed.trials[2]

    outcome = run_search(
        model=vgg.model,
        family="cnn",
        layers=vgg.layers,
        reference=vgg.reference,
        search_split=vgg.search,
        prune=PruneSpec(rates=RATES),
        # The retry is queued behind the seeds still waiting (numbers 3-5), so the budget reaches it.
        spec=SearchSpec(trials=7, seed=3),
        storage=url,
        study_name="job-7",
    )
    assert outcome.requeued_trials == [2]
    assert outcome.trials_completed + outcome.trials_pruned == 7 and outcome.trials_failed == 1
    assert [(r["number"], r["params"], r["value"]) for r in outcome.history[:2]] == finished
    failed = outcome.history[2]
    (retry,) = [r for r in outcome.history if r["user_attrs"].get("pxp_retry_of") is not None]
    assert failed["state"] == "FAIL" and failed["user_attrs"]["pxp_interrupted"] is True
    assert retry["state"] == "COMPLETE" and retry["params"] == interrupted.params
    assert retry["user_attrs"]["pxp_retry_of"] == 2
    assert outcome.history[0]["user_attrs"]["pxp_role"] == "default"
