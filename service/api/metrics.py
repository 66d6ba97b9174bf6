"""Prometheus metrics of the gateway.

Request counts and latencies are labelled by route template (not raw path) to keep
cardinality bounded. Job counts by status are read from the database at scrape time,
so they are right across gateway replicas and restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from service.db import repo
from service.db.models import JOB_STATUSES
from service.db.session import SessionFactory

disable_created_metrics()

REQUESTS = Counter("pxp_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "pxp_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_CREATED = Counter("pxp_jobs_created_total", "Jobs accepted by this gateway")


class JobStatusCollector(Collector):
    """Registered once per process; :func:`track_jobs` points it at the app's database."""

    def __init__(self, max_age_s: float = 5.0) -> None:
        self.factory: SessionFactory | None = None
        self.max_age_s = max_age_s
        self._cached: tuple[float, dict[str, int]] | None = None

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("pxp_jobs", "Jobs by status", labels=["status"])

    def collect(self) -> Iterable[Metric]:
        now = time.monotonic()
        if self.factory is not None and (self._cached is None or now - self._cached[0] > self.max_age_s):
            try:
                with self.factory() as s:
                    self._cached = (now, repo.count_jobs_by_status(s))
            except Exception:
                self._cached = None
        family = GaugeMetricFamily("pxp_jobs", "Jobs by status", labels=["status"])
        counts = self._cached[1] if self._cached else {}
        for status in JOB_STATUSES:
            family.add_metric([status], counts.get(status, 0))
        yield family


_JOBS = JobStatusCollector()
_registered = False


def track_jobs(factory: SessionFactory) -> None:
    global _registered
    _JOBS.factory = factory
    _JOBS._cached = None
    if not _registered:
        REGISTRY.register(_JOBS)
        _registered = True


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)


class MetricsMiddleware:
    """Pure ASGI timing of every HTTP request (SSE streams count until they close)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            REQUESTS.labels(method, template, str(status)).inc()
            LATENCY.labels(method, template).observe(time.perf_counter() - start)
