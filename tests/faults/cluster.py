"""A whole production layout on loopback, owned by one test module, for fault injection.

Its own Postgres cluster (``initdb``/``pg_ctl`` in a temporary directory, run as the
``postgres`` user when we are root), its own ``redis-server`` (nothing on disk), a bucket
on the session's moto S3 server, a uvicorn gateway and two Celery workers running the
scripted pipeline (tests/worker/scripted_pipeline.py), all on spare ports. Every process
is started in its own session so that teardown can end it and everything it forked.
Nothing here touches the shared Postgres or Redis.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, SCRIPTED_WORKER, S3Server, free_port, wait_for

SPEC_ARCH = "digits_vgg"


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> Proc:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(proc, log)


@dataclass
class FaultCluster:
    root: Path
    s3: S3Server
    pg_port: int = 0
    redis_port: int = 0
    gateway_port: int = 0
    settings: Any = None
    redis: Proc | None = None
    gateway: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    key: str = ""
    _engine: Any = None

    # Postgres ------------------------------------------------------------------------

    @property
    def pg_data(self) -> Path:
        return self.root / "pg"

    def _pg_ctl(self, *args: str) -> None:
        log = self.root / "pg.log"
        cmd = ["pg_ctl", "-D", str(self.pg_data), "-l", str(log), "-w", "-t", "60", *args]
        subprocess.run(_as_postgres(cmd), check=True, capture_output=True, timeout=90)

    def init_postgres(self) -> None:
        self.pg_data.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(self.pg_data, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            _as_postgres(["initdb", "-D", str(self.pg_data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.pg_port = free_port()
        opts = (
            f"-c port={self.pg_port} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c unix_socket_directories={self.pg_data} -c max_connections=100"
        )
        self._pg_ctl("-o", opts, "start")
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE pxp")

    def start_postgres(self) -> None:
        opts = (
            f"-c port={self.pg_port} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c unix_socket_directories={self.pg_data} -c max_connections=100"
        )
        self._pg_ctl("-o", opts, "start")

    def stop_postgres(self) -> None:
        self._pg_ctl("-m", "immediate", "stop")

    @property
    def db_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/pxp"

    def engine(self) -> Any:
        if self._engine is None:
            from service.db.session import make_engine

            self._engine = make_engine(self.db_url)
        return self._engine

    # Redis ---------------------------------------------------------------------------

    def start_redis(self) -> None:
        if not self.redis_port:
            self.redis_port = free_port()
        cmd = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.root)]
        self.redis = _spawn(cmd, {}, self.root / "redis.log")
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 20, 0.05, "redis-server")
        client.close()

    def restart_redis(self) -> None:
        """Kill Redis and start an empty one on the same port (it keeps nothing on disk)."""
        assert self.redis is not None
        self.redis.kill_group()
        self.start_redis()

    # Gateway and workers ---------------------------------------------------------------

    def make_settings(self) -> Any:
        from service.settings import Settings

        return Settings(
            data_dir=self.root / "data",
            work_dir=self.root / "work",
            database_url=self.db_url,
            broker_url=f"redis://127.0.0.1:{self.redis_port}/0",
            storage_backend="s3",
            s3_bucket=self.s3.bucket,
            s3_endpoint_url=self.s3.endpoint,
            s3_access_key_id="testing",
            s3_secret_access_key="testing",
            allowed_uri_schemes=["http", "https"],
            allow_private_addresses=True,
            auth_cache_ttl_s=30,
            heartbeat_interval_s=0.5,
            heartbeat_stale_s=4,
            queued_grace_s=1,
            reconcile_interval_s=1,
            progress_min_interval_s=0,
            max_attempts=8,
            job_soft_time_limit_s=120,
            job_time_limit_s=150,
        )

    def start_gateway(self) -> None:
        if not self.gateway_port:
            self.gateway_port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.gateway_port), "--log-level", "warning", "--no-access-log"]
        self.gateway = _spawn(cmd, self.settings.env(), self.root / "gateway.log")
        gateway = self.gateway

        def ready() -> bool:
            if not gateway.alive():
                raise RuntimeError(f"gateway exited:\n{gateway.tail()}")
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 90, 0.2, "the gateway")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start_worker(self, index: int) -> Proc:
        log = self.root / f"worker{index}.log"
        cmd = [sys.executable, *SCRIPTED_WORKER, "-Q", self.settings.queue_name, "-c", "1", "-P", "prefork"]
        cmd += ["-n", f"fault{index}-{secrets.token_hex(2)}@%h", "--without-gossip", "--without-mingle"]
        cmd += ["--loglevel", "INFO"]
        start = log.stat().st_size if log.exists() else 0
        worker = _spawn(cmd, self.settings.env(), log)

        def ready() -> bool:
            if not worker.alive():
                raise RuntimeError(f"worker exited:\n{worker.tail()}")
            with open(log, "rb") as fh:
                fh.seek(start)
                return b" ready." in fh.read()

        wait_for(ready, 90, 0.2, "a celery worker")
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        return worker

    # Lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.init_postgres()
        self.start_redis()
        self.settings = self.make_settings()
        from service.admin import create_key
        from service.db.migrate import upgrade

        upgrade(self.db_url)
        self.key = create_key(f"fault-{secrets.token_hex(3)}", settings=self.settings).key
        self.start_gateway()
        for i in range(2):
            self.start_worker(i)

    def stop(self) -> None:
        for proc in [self.gateway, *self.workers, self.redis]:
            if proc is not None:
                proc.kill_group()
        if self._engine is not None:
            self._engine.dispose()
        with contextlib.suppress(Exception):
            self._pg_ctl("-m", "immediate", "stop")

    # Jobs ----------------------------------------------------------------------------------

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def submit(
        self, steps: int = 3, delay: float = 0.3, *, key: str | None = None, deadline_s: float = 60
    ) -> str:
        """Submit one scripted job, retrying (same Idempotency-Key) through outages."""
        key = key or secrets.token_hex(8)
        body = {"spec": {"model": {"architecture": SPEC_ARCH, "kwargs": {"steps": steps, "delay": delay}}}}
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                resp = httpx.post(self.url + "/v1/jobs", json=body, headers=self.headers(key), timeout=5)
                if resp.status_code == 202:
                    return str(resp.json()["id"])
                if resp.status_code != 503:
                    raise AssertionError(f"submit answered {resp.status_code}: {resp.text}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("could not submit a job")
            time.sleep(0.2)

    def jobs(self, ids: list[str]) -> dict[str, Any]:
        from sqlalchemy import select

        from service.db.models import Job

        with self.engine().connect() as conn:
            rows = conn.execute(select(Job.id, Job.status, Job.worker, Job.attempts).where(Job.id.in_(ids)))
            return {r.id: r for r in rows}

    def wait_running(self, ids: list[str], timeout: float = 60) -> tuple[str, Any]:
        """The id and row of a job of ``ids`` that is running now (submitting a burst can
        take longer than the first jobs do, so any of them will do)."""

        def running() -> tuple[str, Any] | None:
            rows = self.jobs(ids)
            for job_id in ids:
                row = rows.get(job_id)
                if row is not None and row.status == "running" and row.worker:
                    return job_id, row
            if len(rows) == len(ids) and all(
                r.status != "queued" and r.status != "running" for r in rows.values()
            ):
                raise AssertionError("every job ended before the fault could be injected")
            return None

        return wait_for(running, timeout, 0.05, "a job running")

    def wait_terminal(self, ids: list[str], timeout: float) -> float:
        """Seconds until every job in ``ids`` is terminal (raises on timeout)."""
        start = time.monotonic()

        def done() -> bool:
            try:
                rows = self.jobs(ids)
            except Exception:
                return False
            return len(rows) == len(ids) and all(
                r.status in ("succeeded", "failed", "cancelled") for r in rows.values()
            )

        wait_for(done, timeout, 0.2, "every job to end")
        return time.monotonic() - start


def child_pid(worker_field: str) -> int:
    """The pid in a job's ``worker`` (``host:pid:label``): the Celery child running it."""
    return int(worker_field.split(":")[1])


def check_end_state(cluster: FaultCluster, expected: dict[str, str]) -> dict[str, int]:
    """Every job terminal with its expected status, one artifact row per (job, name), each
    row's object present in storage with its size, no work directory left behind.
    Returns the counts for the report."""
    from sqlalchemy import func, select

    from service.db.models import Artifact

    rows = cluster.jobs(list(expected))
    statuses = {job_id: row.status for job_id, row in rows.items()}
    with cluster.engine().connect() as conn:
        arts = conn.execute(
            select(Artifact.job_id, Artifact.name, Artifact.storage_key, Artifact.size_bytes).where(
                Artifact.job_id.in_(list(expected))
            )
        ).all()
        dup = conn.execute(
            select(func.count())
            .select_from(Artifact)
            .where(Artifact.job_id.in_(list(expected)))
            .group_by(Artifact.job_id, Artifact.name)
            .having(func.count() > 1)
        ).all()
    client = cluster.s3.client()
    objects = {
        obj["Key"]: obj["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=cluster.s3.bucket)
        for obj in page.get("Contents", [])
    }
    problems: list[str] = []
    for job_id, want in expected.items():
        if statuses.get(job_id) != want:
            problems.append(f"job {job_id}: {statuses.get(job_id)} != {want}")
        names = sorted(a.name for a in arts if a.job_id == job_id)
        want_names = ["model.safetensors", "results.json"] if want == "succeeded" else []
        if names != want_names:
            problems.append(f"job {job_id}: artifacts {names} != {want_names}")
        if (cluster.settings.jobs_dir / job_id).exists():
            problems.append(f"job {job_id}: work directory left behind")
    for art in arts:
        if objects.get(art.storage_key) != art.size_bytes:
            problems.append(
                f"artifact {art.job_id}/{art.name}: object {art.storage_key} missing or wrong size"
            )
    assert not problems, problems
    values = list(statuses.values())
    return {
        "jobs": len(expected),
        "succeeded": values.count("succeeded"),
        "cancelled": values.count("cancelled"),
        "failed": values.count("failed"),
        "stuck": sum(1 for v in values if v not in ("succeeded", "failed", "cancelled")),
        "duplicates": len(dup),
    }


def make_cluster(s3: S3Server) -> FaultCluster:
    root = Path(tempfile.mkdtemp(prefix="pxp-faults-"))
    os.chmod(root, 0o755)
    bucket = f"pxp-faults-{secrets.token_hex(4)}"
    s3.client().create_bucket(Bucket=bucket)
    return FaultCluster(root=root, s3=S3Server(endpoint=s3.endpoint, bucket=bucket))


def remove_cluster(cluster: FaultCluster) -> None:
    """Stop everything; the directory (logs included) stays when ``PXP_FAULT_KEEP`` is set."""
    cluster.stop()
    if os.environ.get("PXP_FAULT_KEEP"):
        print(f"fault cluster logs kept in {cluster.root}")
        return
    shutil.rmtree(cluster.root, ignore_errors=True)


Check = Callable[[FaultCluster, dict[str, str]], dict[str, int]]
