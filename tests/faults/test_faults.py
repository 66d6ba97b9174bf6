"""Fault scenarios against a whole production layout (tests/faults/cluster.py).

Each scenario submits tiny scripted jobs, injects one fault and asserts the end state:
every job terminal with the right status, no duplicate artifact rows, every artifact row's
object in storage, no work directory left, recovery within a bound.

The default run (``make test``) is the bounded form: ``PXP_FAULT_JOBS`` (default 3) jobs per
scenario. ``PXP_FAULT_JOBS=20 pytest -m fault tests/faults`` is the full form;
``PXP_FAULT_REPORT=<file>`` appends one JSON row per scenario (``bench/faults.py`` prints
them as a table).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import S3Server, wait_for
from tests.faults.cluster import FaultCluster, check_end_state, child_pid, make_cluster, remove_cluster

pytestmark = [pytest.mark.fault, pytest.mark.service]

JOBS = int(os.environ.get("PXP_FAULT_JOBS", "3"))
#: Seconds every job must be terminal within, after the fault.
RECOVERY_BOUND_S = float(os.environ.get("PXP_FAULT_RECOVERY_S", "90")) + 2 * JOBS


@pytest.fixture(scope="module")
def cluster(s3_server: S3Server) -> Iterator[FaultCluster]:
    c = make_cluster(s3_server)
    try:
        c.start()
        yield c
    finally:
        remove_cluster(c)


def _report(scenario: str, counts: dict[str, int], recovery_s: float) -> None:
    row = {"scenario": scenario, **counts, "recovery_s": round(recovery_s, 1)}
    path = os.environ.get("PXP_FAULT_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    print(row)


def _finish(cluster: FaultCluster, scenario: str, expected: dict[str, str], fault_at: float) -> None:
    cluster.wait_terminal(list(expected), RECOVERY_BOUND_S)
    recovery = time.monotonic() - fault_at
    counts = check_end_state(cluster, expected)
    _report(scenario, counts, recovery)
    assert counts["stuck"] == 0 and counts["duplicates"] == 0
    assert recovery < RECOVERY_BOUND_S


def _ensure_workers(cluster: FaultCluster) -> None:
    for i, worker in enumerate(cluster.workers):
        if not worker.alive():
            cluster.start_worker(i)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _running_child(cluster: FaultCluster, ids: list[str]) -> tuple[str, int, int]:
    """A running job, the pid of the Celery child running it and of that child's main
    process (a child recycled after ``max_tasks_per_child`` jobs is skipped)."""
    for _ in range(20):
        job_id, row = cluster.wait_running(ids)
        pid = child_pid(row.worker)
        try:
            return job_id, pid, _parent(pid)
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            time.sleep(0.05)
    raise AssertionError("no running job whose child process could be found")


def test_worker_child_sigkilled_mid_job(cluster):
    ids = [cluster.submit(steps=4, delay=0.4) for _ in range(JOBS)]
    victim, child, _main = _running_child(cluster, ids)
    fault_at = time.monotonic()
    os.kill(child, signal.SIGKILL)
    _finish(cluster, "worker child SIGKILL", dict.fromkeys(ids, "succeeded"), fault_at)
    assert cluster.jobs([victim])[victim].attempts >= 2
    _ensure_workers(cluster)


def test_worker_main_process_sigkilled(cluster):
    ids = [cluster.submit(steps=4, delay=0.4) for _ in range(JOBS)]
    _victim, _child, main = _running_child(cluster, ids)
    index = next(i for i, w in enumerate(cluster.workers) if w.pid == main)
    fault_at = time.monotonic()
    os.kill(main, signal.SIGKILL)
    cluster.workers[index].proc.wait(10)
    cluster.start_worker(index)  # the host's supervisor brings it back
    _finish(cluster, "worker main SIGKILL", dict.fromkeys(ids, "succeeded"), fault_at)


def test_redis_restarted_with_nothing_on_disk(cluster):
    ids = [cluster.submit(steps=3, delay=0.4) for _ in range(JOBS + 1)]
    cluster.wait_running(ids)
    fault_at = time.monotonic()
    cluster.restart_redis()
    _finish(cluster, "Redis restart (empty)", dict.fromkeys(ids, "succeeded"), fault_at)


def test_postgres_stopped_and_restarted_with_jobs_queued_and_running(cluster):
    ids = [cluster.submit(steps=4, delay=0.4) for _ in range(JOBS + 1)]
    cluster.wait_running(ids)
    fault_at = time.monotonic()
    cluster.stop_postgres()
    try:
        # Submits during the outage are 503 with Retry-After, never 500.
        resp = httpx.post(
            cluster.url + "/v1/jobs",
            json={"spec": {"model": {"architecture": "digits_vgg"}}},
            headers=cluster.headers(),
            timeout=10,
        )
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"].isdigit()
        time.sleep(3)  # long enough for the queued jobs' messages to be consumed and fail
    finally:
        cluster.start_postgres()
    _finish(cluster, "Postgres stop/start", dict.fromkeys(ids, "succeeded"), fault_at)


def test_gateway_sigkilled_during_a_submit_burst(cluster):
    keys = [secrets.token_hex(8) for _ in range(JOBS * 2)]
    ids: dict[str, str] = {}

    def burst() -> None:
        for key in keys:
            ids[key] = cluster.submit(steps=2, delay=0.2, key=key, deadline_s=120)

    thread = threading.Thread(target=burst)
    thread.start()
    wait_for(lambda: len(ids) >= 1, 30, 0.01, "the first submit")
    fault_at = time.monotonic()
    assert cluster.gateway is not None
    cluster.gateway.kill_group()
    cluster.start_gateway()
    thread.join(150)
    assert len(ids) == len(keys)
    # One job per Idempotency-Key: a retried submit never made a second job.
    assert len(set(ids.values())) == len(keys)
    _finish(cluster, "gateway SIGKILL in submit burst", dict.fromkeys(ids.values(), "succeeded"), fault_at)


def test_cancel_after_a_worker_crash(cluster):
    victim = cluster.submit(steps=8, delay=0.5)
    others = [cluster.submit(steps=2, delay=0.2) for _ in range(JOBS - 1)]
    _victim, child, _main = _running_child(cluster, [victim])
    time.sleep(0.6)  # a stage finished: the work directory holds state
    fault_at = time.monotonic()
    os.kill(child, signal.SIGKILL)
    resp = httpx.post(f"{cluster.url}/v1/jobs/{victim}/cancel", headers=cluster.headers(), timeout=10)
    assert resp.status_code == 202, resp.text
    expected = {victim: "cancelled", **dict.fromkeys(others, "succeeded")}
    _finish(cluster, "cancel after worker crash", expected, fault_at)
    _ensure_workers(cluster)
