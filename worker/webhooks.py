"""Deliver the webhook outbox: POST each terminal job state to its ``callback_url``.

Rows of ``webhook_deliveries`` are written in the transaction that makes a job terminal
(:func:`service.db.repo.finish_job`, ``fail_job``, ``request_cancel``), so a delivery
outlives any process. Every worker process runs :func:`start_thread` (the Celery worker
beside its reconciler, the embedded worker in its loop); ``python -m worker.webhooks``
runs the loop standalone. A pass leases due rows (``FOR UPDATE SKIP LOCKED``, then
``next_attempt_at`` moves past the request timeout), so concurrent loops never send the
same row at once, and a loop killed mid-send leaves a lease that simply expires.

Each request carries:

* ``X-Pxp-Timestamp``: Unix seconds at signing;
* ``X-Pxp-Signature``: ``v1=`` + hex HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed with the
  tenant's webhook secret;
* ``X-Pxp-Event`` (``job.succeeded`` | ``job.failed`` | ``job.cancelled``) and
  ``X-Pxp-Delivery`` (the delivery id: the same on every retry, for de-duplication).

A 2xx answer is success; anything else (or no answer) is retried after
``webhook_backoff_base_s * 2**(attempt-1)`` seconds (capped at ``webhook_backoff_max_s``)
until ``webhook_max_attempts``. Redirects are not followed, and the URL is checked against
the address policy again before every attempt.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import httpx

from pxp import jsonlog
from pxp.errors import PxpError
from service.db import repo
from service.db.session import SessionFactory, make_session_factory
from service.db.types import utcnow
from service.settings import Settings, get_settings
from service.storage.remote import pinned_request, resolve_callback

log = logging.getLogger("pxp.webhooks")

USER_AGENT = "pxp-webhooks/1"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Pxp-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def backoff_s(attempt: int, settings: Settings) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return float(min(settings.webhook_backoff_max_s, settings.webhook_backoff_base_s * 2 ** (attempt - 1)))


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def deliver_due(factory: SessionFactory, settings: Settings, *, limit: int = 20) -> DeliveryReport:
    """One pass: send every due delivery once and record the outcome."""
    report = DeliveryReport()
    now = utcnow()
    with factory() as s:
        due = repo.lease_due_deliveries(
            s, now, now + timedelta(seconds=settings.webhook_timeout_s * 3 + 5), limit
        )
        s.commit()
    if not due:
        return report
    with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
        for d in due:
            status_code: int | None = None
            error: str | None = None
            body = d.payload.encode()
            try:
                # Re-checked before every attempt, and sent to the address that was checked
                # (no DNS rebinding between the check and the connection).
                target, pin_headers, extensions = pinned_request(d.url, resolve_callback(d.url, settings))
                stamp = str(int(time.time()))
                resp = client.post(
                    target,
                    content=body,
                    extensions=extensions,
                    headers={
                        **pin_headers,
                        "Content-Type": "application/json",
                        "User-Agent": USER_AGENT,
                        "X-Pxp-Event": d.event,
                        "X-Pxp-Delivery": d.id,
                        "X-Pxp-Timestamp": stamp,
                        "X-Pxp-Signature": sign(d.secret, stamp, body),
                    },
                )
                status_code = resp.status_code
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
            except (httpx.HTTPError, PxpError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            attempt = d.attempts + 1
            delivered = error is None
            retry_at = None
            if not delivered and attempt < settings.webhook_max_attempts:
                retry_at = utcnow() + timedelta(seconds=backoff_s(attempt, settings))
            with factory() as s:
                repo.record_delivery_attempt(
                    s, d.id, delivered=delivered, status_code=status_code, error=error, retry_at=retry_at
                )
                s.commit()
            extra = {"job_id": d.job_id, "delivery_id": d.id, "attempt": attempt}
            if delivered:
                report.delivered.append(d.id)
                log.info("webhook %s delivered to %s", d.event, d.url, extra=extra)
            elif retry_at is not None:
                report.retried.append(d.id)
                log.warning("webhook %s to %s failed (%s); retrying", d.event, d.url, error, extra=extra)
            else:
                report.failed.append(d.id)
                log.error("webhook %s to %s failed (%s); giving up", d.event, d.url, error, extra=extra)
    return report


def run_forever(factory: SessionFactory, settings: Settings, stop: threading.Event) -> None:
    while True:
        try:
            report = deliver_due(factory, settings)
            busy = bool(report.delivered or report.retried or report.failed)
        except Exception:
            log.exception("webhook delivery pass failed")
            busy = False
        if stop.wait(0 if busy else settings.webhook_poll_interval_s):
            return


def start_thread(
    factory: SessionFactory, settings: Settings
) -> tuple[threading.Thread, threading.Event] | None:
    """The delivery loop as a daemon thread (None when ``webhook_delivery`` is off)."""
    if not settings.webhook_delivery:
        return None
    stop = threading.Event()
    thread = threading.Thread(
        target=run_forever, args=(factory, settings, stop), name="pxp-webhooks", daemon=True
    )
    thread.start()
    return thread, stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Deliver pending pxp webhooks (PXP_DATABASE_URL).")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    settings = get_settings()
    jsonlog.configure(settings.log_format, settings.log_level)
    factory = make_session_factory(settings)
    log.info("webhook delivery loop started (pid %s)", os.getpid())
    if args.once:
        print(deliver_due(factory, settings))
        return
    run_forever(factory, settings, threading.Event())


if __name__ == "__main__":
    main()
