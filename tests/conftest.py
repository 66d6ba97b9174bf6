"""Shared fixtures for the real services the service tests run against.

* Postgres at 127.0.0.1:5432: a throwaway database per test run, created with the Alembic
  migrations (the only way the schema is made) and dropped at the end. Tests that only
  talk to the gateway run inside a transaction rolled back afterwards (``db_factory``).
* Redis at 127.0.0.1:6379: a database number claimed for this run (flushed before and
  after) and run-specific key prefix and queue names.
* S3: moto's server mode on a loopback port, reached through boto3.
* Celery: a real worker process (``celery_worker``) and a real uvicorn gateway
  (``live_gateway``) started on demand.

Everything here is lazy and torch-free, so the pxp tests that share this conftest pay nothing.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_DSN = os.environ.get("PXP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RUN_ID = f"{os.getpid()}{secrets.token_hex(3)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's torch work on one thread (tiny models: a second thread only adds
    OpenMP hand-offs, slow on a shared CPU). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; torch is imported only here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Postgres ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database migrated to head with Alembic; dropped after the run."""
    import psycopg

    name = f"pxp_test_{RUN_ID}"
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"Postgres is not reachable at {PG_ADMIN_DSN}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        from service.db.migrate import upgrade

        upgrade(url)
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Any]:
    from service.db.session import make_engine

    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_factory(pg_engine: Any) -> Iterator[Any]:
    """A session factory whose work is rolled back after the test (commits become savepoints)."""
    from sqlalchemy.orm import sessionmaker

    conn = pg_engine.connect()
    trans = conn.begin()
    factory = sessionmaker(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield factory
    finally:
        trans.rollback()
        conn.close()


@pytest.fixture
def committed_factory(pg_engine: Any) -> Any:
    """A normal session factory, for tests whose data another process must see."""
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(bind=pg_engine, expire_on_commit=False)


# Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number claimed for this run, empty before and after."""
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_timeout=5)
    try:
        admin.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}")
    for number in range(1, 16):
        if admin.set(f"pxp-test:db-claim:{number}", RUN_ID, nx=True, ex=4 * 3600):
            break
    else:
        pytest.fail("no free Redis database number for this test run")
    db = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
    db.flushdb()
    try:
        yield number
    finally:
        db.flushdb()
        admin.delete(f"pxp-test:db-claim:{number}")


@pytest.fixture(scope="session")
def redis_url(redis_db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# S3 (moto server) -------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def object_keys(self) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(endpoint=f"http://127.0.0.1:{port}", bucket=f"pxp-test-{RUN_ID}")
    s3.client().create_bucket(Bucket=s3.bucket)
    try:
        yield s3
    finally:
        server.stop()


# Settings and apps ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prod_settings(
    pg_url: str, redis_url: str, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """Production-mode settings against the real test services.

    Loopback addresses are allowed for URIs because the S3 server under test is on
    127.0.0.1; tests of the URI policy use settings without that flag.
    """
    from service.settings import Settings

    return Settings(
        data_dir=tmp_path_factory.mktemp("pxp-data"),
        database_url=pg_url,
        broker_url=redis_url,
        storage_backend="s3",
        s3_bucket=s3_server.bucket,
        s3_endpoint_url=s3_server.endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        allowed_uri_schemes=["http", "https"],
        allow_private_addresses=True,
        callback_url_schemes=["http", "https"],
        webhook_backoff_base_s=0.2,
        webhook_poll_interval_s=0.2,
        webhook_timeout_s=2,
        auth_cache_ttl_s=0,
        redis_key_prefix=f"pxp-test-{RUN_ID}:",
        queue_name=f"pxp-test-{RUN_ID}",
        heartbeat_interval_s=0.5,
        heartbeat_stale_s=5,
        queued_grace_s=1,
        reconcile_interval_s=1,
        progress_min_interval_s=0,
        sse_poll_interval_s=0.1,
        job_soft_time_limit_s=300,
        job_time_limit_s=360,
    )


@dataclass
class ApiHarness:
    client: Any
    app: Any
    settings: Any
    factory: Any
    s3: S3Server

    def key(self, tenant: str | None = None) -> dict[str, str]:
        """Authorization headers for a new key of ``tenant`` (a fresh tenant by default)."""
        from service.db import repo

        with self.factory() as s:
            _row, plaintext = repo.create_api_key(s, tenant or f"t-{secrets.token_hex(4)}")
            s.commit()
        return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture
def make_api(db_factory: Any, prod_settings: Any, s3_server: S3Server) -> Iterator[Callable[..., ApiHarness]]:
    """Build a TestClient app on the rolled-back session factory, with settings overrides.

    Its dispatcher sends real Celery messages to a queue no worker consumes.
    """
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.dispatch import CeleryDispatcher

    clients: list[Any] = []

    def build(**overrides: Any) -> ApiHarness:
        settings = prod_settings.model_copy(
            update={"queue_name": f"pxp-test-{RUN_ID}-unconsumed", **overrides}
        )
        app = create_app(settings, session_factory=db_factory, dispatcher=CeleryDispatcher(settings))
        client = TestClient(app)
        clients.append(client)
        return ApiHarness(client=client, app=app, settings=settings, factory=db_factory, s3=s3_server)

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def api(make_api: Callable[..., ApiHarness]) -> ApiHarness:
    return make_api()


# Processes: a Celery worker and a uvicorn gateway --------------------------------------------


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> Proc:
    full_env = {**os.environ, **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    return Proc(proc, log)


#: ``celery worker`` running the real ``pxp.pipeline.run`` (as in production) ...
REAL_WORKER = ("-m", "celery", "-A", "worker.celery_app", "worker")
#: ... and the same worker with the scripted pipeline installed (tests/worker/scripted_worker.py).
SCRIPTED_WORKER = ("-m", "tests.worker.scripted_worker")


def start_celery_worker(
    settings: Any,
    log: Path,
    name: str,
    extra_env: dict[str, str] | None = None,
    *,
    launcher: tuple[str, ...] = REAL_WORKER,
) -> Proc:
    env = {**settings.env(), **(extra_env or {})}
    cmd = [sys.executable, *launcher, "-Q", settings.queue_name]
    cmd += ["-c", "1", "-P", "prefork", "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
    cmd += ["--loglevel", "INFO"]
    worker = start_process(cmd, env, log)

    def ready() -> bool:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"celery worker exited:\n{worker.tail()}")
        return " ready." in worker.log.read_text(errors="replace")

    wait_for(ready, 60, 0.2, "the celery worker")
    return worker


def start_gateway(settings: Any, log: Path) -> tuple[Proc, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log"]
    gateway = start_process(cmd, settings.env(), log)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        import httpx

        if gateway.proc.poll() is not None:
            raise RuntimeError(f"gateway exited:\n{gateway.tail()}")
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, 60, 0.2, "the gateway")
    return gateway, url


@pytest.fixture(scope="session")
def worker_settings(prod_settings: Any) -> Any:
    """Settings of the plumbing worker (its own queue; it runs the scripted pipeline)."""
    return prod_settings.model_copy(update={"queue_name": f"pxp-test-{RUN_ID}-plumbing"})


@pytest.fixture(scope="session")
def celery_worker(worker_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A real Celery worker on the real Redis, running the scripted pipeline."""
    log = tmp_path_factory.mktemp("logs") / "celery-plumbing.log"
    worker = start_celery_worker(worker_settings, log, f"plumbing-{RUN_ID}", launcher=SCRIPTED_WORKER)
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def live_gateway(worker_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A uvicorn gateway over HTTP, sending jobs to the plumbing worker's queue."""
    log = tmp_path_factory.mktemp("logs") / "gateway.log"
    gateway, url = start_gateway(worker_settings, log)
    yield url
    gateway.stop()


@pytest.fixture
def tenant_key(worker_settings: Any) -> str:
    """A committed API key of a fresh tenant (for tests against processes)."""
    from service.admin import create_key

    return create_key(f"t-{secrets.token_hex(4)}", settings=worker_settings).key
