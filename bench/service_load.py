"""Load benchmark of the pxp gateway (bounded in requests and time).

Measures, against a gateway on loopback:

1. **submit latency** (``POST /v1/jobs`` round trip) and **submit-to-running** (until the
   job row says ``running``) with an idle worker, over ``--submits`` jobs (each cancelled
   once running, and the worker let go idle again);
2. **status GET latency** (``GET /v1/jobs/{id}``) from ``--clients`` concurrent clients while
   a worker runs a real compression job; each client polls, waits ``--think-ms``, polls
   again, until ``--requests`` requests in total or ``--duration`` seconds;
3. **gateway memory**: the gateway process's RSS from its own ``/metrics``.

Targets: p99 < 50 ms, submit-to-running < 1 s, RSS < 150 MB.

Either point it at a running gateway (``--url``, ``--api-key``; its workers must run the real
pipeline), or let it start one:

* ``--spawn production``: a throwaway Postgres database (migrated with Alembic), Redis, a
  uvicorn gateway and a Celery worker, artifacts in a temporary directory;
* ``--spawn embedded``: ``pxp-service serve`` (SQLite, embedded worker).

    .venv/bin/python bench/service_load.py --spawn production
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pxp.client import LocalServer, PxpClient  # noqa: E402

#: A job that keeps a worker busy: many search trials on the tiny digits VGG (cancelled at the end).
BUSY_SPEC = {
    "model": {
        "architecture": "digits_vgg",
        "kwargs": {"widths": [8, 16, 32], "convs_per_stage": 1, "hidden": 32},
    },
    "splits": {"reference_samples_per_class": 5},
    "prune": {"rates": [0.0, 0.2, 0.4, 0.6]},
    "search": {"trials": 10_000},
}
QUICK_SPEC = {**BUSY_SPEC, "search": None}
UVICORN = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
CELERY = [
    sys.executable,
    "-m",
    "celery",
    "-A",
    "worker.celery_app",
    "worker",
    "--without-gossip",
    "--without-mingle",
]


@dataclass
class Gateway:
    url: str
    api_key: str
    mode: str
    pid: int | None = None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("gateway not ready")


@contextmanager
def spawn_production(workdir: Path, gateway_nice: int = 0) -> Iterator[Gateway]:
    """Postgres + Redis + uvicorn + Celery on this machine, all torn down afterwards."""
    import psycopg
    import redis

    from service.admin import create_key
    from service.db.migrate import upgrade
    from service.settings import Settings

    name = f"pxp_bench_{secrets.token_hex(4)}"
    # Claim a Redis database number the way the test suite does, so neither wipes the other.
    claims = redis.Redis(db=0)
    redis_db = next(
        n for n in range(15, 0, -1) if claims.set(f"pxp-test:db-claim:{n}", name, nx=True, ex=3600)
    )
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    settings = Settings(
        data_dir=workdir,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        broker_url=f"redis://127.0.0.1:6379/{redis_db}",
        storage_backend="local",
        storage_dir=workdir / "artifacts",
        queue_name=f"pxp-bench-{name}",
        redis_key_prefix=f"pxp-bench-{name}:",
        auth_cache_ttl_s=5,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(settings.db_url)
        key = create_key("bench", settings=settings).key
        env = {**os.environ, **settings.env()}
        port = _free_port()
        log = open(workdir / "bench-processes.log", "ab")  # noqa: SIM115
        gateway = subprocess.Popen(
            [
                "nice",
                "-n",
                str(gateway_nice),
                *UVICORN,
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(gateway)
        # The worker runs at lower priority: in production it has a GPU host of its own,
        # here it shares two cores with the gateway and the load generator.
        worker = subprocess.Popen(
            [
                "nice",
                "-n",
                "10",
                *CELERY,
                "-Q",
                settings.queue_name,
                "-c",
                "1",
                "--loglevel",
                "WARNING",
                "-n",
                f"{name}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(worker)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, gateway)
        time.sleep(3)  # let the Celery worker come up
        yield Gateway(url, key, "production (Postgres, Redis, Celery, local artifacts)", gateway.pid)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.Redis(db=redis_db).flushdb()
        claims.delete(f"pxp-test:db-claim:{redis_db}")
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def spawn_embedded(workdir: Path, gateway_nice: int = 0) -> Iterator[Gateway]:
    with LocalServer(workdir) as server:
        yield Gateway(server.url, server.api_key, "embedded (SQLite, embedded worker)", server.pid)


def _wait_status(client: PxpClient, job_id: str, statuses: set[str], timeout: float, interval: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']}")
        time.sleep(interval)


def _stamp(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def measure_submits(client: PxpClient, n: int) -> tuple[list[float], list[float], list[float]]:
    """Submit ``n`` quick jobs one by one to an idle worker; cancel each once it runs.

    Returns the POST round trips, the client-observed submit-to-running times (polling
    every 10 ms) and the server-side queue latencies (``started_at - created_at``).
    """
    submit_s, to_running_s, queued_s = [], [], []
    for _ in range(n):
        start = time.perf_counter()
        job = client.submit(QUICK_SPEC)
        submit_s.append(time.perf_counter() - start)
        running = _wait_status(client, job["id"], {"running", "succeeded", "failed"}, 30, 0.01)
        to_running_s.append(time.perf_counter() - start)
        queued_s.append(_stamp(running["started_at"]) - _stamp(running["created_at"]))
        client.cancel(job["id"])
        _wait_status(client, job["id"], {"cancelled", "succeeded", "failed"}, 120, 0.2)
        time.sleep(1.0)  # the worker's next child process is up again: idle
    return submit_s, to_running_s, queued_s


async def poll_load(
    url: str, key: str, job_id: str, clients: int, total: int, duration: float, think_s: float
):
    """``clients`` pollers of one job. Each first opens its connection and polls twice
    unmeasured (the gateway's connection pool and key cache warm up), then all start the
    measured phase together, spread over one think interval."""
    latencies: list[float] = []
    errors = 0
    budget = [total]
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    warm = asyncio.Event()
    ready = [0]
    deadline = [0.0]

    async def one_client(index: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30
        ) as http:
            for _ in range(2):
                await http.get(f"/v1/jobs/{job_id}")
            ready[0] += 1
            if ready[0] == clients:
                deadline[0] = time.monotonic() + duration
                warm.set()
            await warm.wait()
            await asyncio.sleep(think_s * index / clients)
            while budget[0] > 0 and time.monotonic() < deadline[0]:
                budget[0] -= 1
                start = time.perf_counter()
                try:
                    resp = await http.get(f"/v1/jobs/{job_id}")
                    if resp.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - start)
                if think_s:
                    await asyncio.sleep(think_s)

    tasks = [asyncio.create_task(one_client(i)) for i in range(clients)]
    await warm.wait()
    start = time.perf_counter()
    await asyncio.gather(*tasks)
    return latencies, errors, time.perf_counter() - start


def server_histogram(url: str, route: str = "/v1/jobs/{job_id}") -> dict[float, float]:
    """Cumulative bucket counts of the gateway's own latency histogram for GET ``route``."""
    out: dict[float, float] = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        wanted = f'route="{route}"' in line and 'method="GET"' in line
        if line.startswith("pxp_http_request_duration_seconds_bucket{") and wanted:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bucket bound (s) under which a fraction ``q`` of the requests in between fell."""
    buckets = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in buckets]
    total = counts[-1] if counts else 0
    for bound, count in zip(buckets, counts, strict=True):
        if total and count >= q * total:
            return bound
    return float("nan")


def gateway_rss_mb(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url")
    parser.add_argument("--api-key")
    parser.add_argument("--spawn", choices=["production", "embedded"], default="production")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=5000, help="status GETs in total")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, at most, of status load")
    parser.add_argument("--think-ms", type=float, default=100.0, help="pause of each client between polls")
    parser.add_argument("--submits", type=int, default=5)
    parser.add_argument(
        "--priority",
        type=int,
        default=0,
        help="niceness of the spawned gateway and of this load generator (negative needs root); use it "
        "to shield them from unrelated load on a shared machine, as a dedicated gateway host would be",
    )
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        if args.url:
            gw = Gateway(args.url, args.api_key or "", "external")
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pxp-bench-")))
            spawn = spawn_production if args.spawn == "production" else spawn_embedded
            gw = stack.enter_context(spawn(workdir, args.priority))
        if args.priority:
            os.nice(args.priority - os.nice(0))
        client = stack.enter_context(PxpClient(gw.url, gw.api_key, timeout=30))
        rss_idle = gateway_rss_mb(gw.url)

        print(f"gateway: {gw.url} [{gw.mode}]", file=sys.stderr)
        print("warming up (first job trains/caches the tiny zoo model)...", file=sys.stderr)
        warm = client.submit(QUICK_SPEC)
        _wait_status(client, warm["id"], {"running"}, 60, 0.05)
        client.cancel(warm["id"])
        _wait_status(client, warm["id"], {"cancelled", "succeeded", "failed"}, 600, 0.5)
        time.sleep(1.0)

        print(f"submit-to-running x{args.submits} with an idle worker...", file=sys.stderr)
        submit_s, to_running_s, queued_s = measure_submits(client, args.submits)

        busy = client.submit(BUSY_SPEC)
        job = _wait_status(client, busy["id"], {"running"}, 60, 0.05)
        deadline = time.monotonic() + 120
        while not (job.get("stage") or "").startswith(("search", "attribution", "curve")):
            if time.monotonic() > deadline or job["status"] != "running":
                break
            time.sleep(0.5)
            job = client.job(busy["id"])
        print(f"status load while the worker runs a job (stage {job.get('stage')})...", file=sys.stderr)
        hist_before = server_histogram(gw.url)
        cpu_before = cpu_seconds(gw.pid)
        latencies, errors, elapsed = asyncio.run(
            poll_load(
                gw.url,
                gw.api_key,
                busy["id"],
                args.clients,
                args.requests,
                args.duration,
                args.think_ms / 1000,
            )
        )
        cpu_after = cpu_seconds(gw.pid)
        hist_after = server_histogram(gw.url)
        still_running = client.job(busy["id"])["status"] == "running"
        rss_loaded = gateway_rss_mb(gw.url)
        client.cancel(busy["id"])

    ms = [x * 1000 for x in latencies]
    cpu_per_request = (
        f"{(cpu_after - cpu_before) / len(ms) * 1000:.2f}" if cpu_before is not None and cpu_after else "n/a"
    )
    rows = [
        ("status GET p50 (ms)", f"{pct(ms, 50):.1f}", ""),
        ("status GET p95 (ms)", f"{pct(ms, 95):.1f}", ""),
        ("status GET p99 (ms)", f"{pct(ms, 99):.1f}", "< 50"),
        ("status GET max (ms)", f"{max(ms):.1f}", ""),
        (
            "  gateway-side p50 / p99 (ms, bucket bound)",
            f"<= {histogram_quantile(hist_before, hist_after, 0.5) * 1000:g} / "
            f"<= {histogram_quantile(hist_before, hist_after, 0.99) * 1000:g}",
            "",
        ),
        ("  gateway CPU per status GET (ms)", cpu_per_request, ""),
        ("status GETs / errors", f"{len(ms)} / {errors}", "0 errors"),
        ("status GET throughput (req/s)", f"{len(ms) / elapsed:.0f}", ""),
        ("worker busy during the load", str(still_running), "True"),
        (
            "submit latency median / max (ms)",
            f"{statistics.median(submit_s) * 1000:.1f} / {max(submit_s) * 1000:.1f}",
            "",
        ),
        (
            "submit-to-running median / max (s)",
            f"{statistics.median(to_running_s):.2f} / {max(to_running_s):.2f}",
            "< 1",
        ),
        (
            "queue latency created->started median / max (s)",
            f"{statistics.median(queued_s):.2f} / {max(queued_s):.2f}",
            "",
        ),
        ("gateway RSS idle / after load (MB)", f"{rss_idle:.0f} / {rss_loaded:.0f}", "< 150"),
    ]
    worker_nice = "+10" if gw.mode.startswith("production") else "PXP_EMBEDDED_WORKER_NICE (5)"
    print(
        f"\npxp gateway load: {gw.mode}; {args.clients} clients, think {args.think_ms:.0f} ms; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"gateway/load-generator niceness {args.priority}, worker niceness {worker_nice}"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'measured':>16}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>16}  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
