"""The Celery application (production mode): ``celery -A worker.celery_app worker``.

Configured from ``PXP_*`` settings by :func:`worker.celery_config.make_celery`; each
worker process also runs the reconciler thread (one of them acts per interval) and the
webhook delivery thread (:mod:`worker.webhooks`; rows are leased, so any number may run).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import setup_logging, worker_ready, worker_shutdown

from pxp import jsonlog
from service.settings import get_settings
from worker.celery_config import make_celery

log = logging.getLogger("pxp.worker")

app = make_celery(get_settings())
_reconciler: Any = None
_webhooks: Any = None


@setup_logging.connect
def _logging(loglevel: Any = None, **_kwargs: Any) -> None:
    """JSON lines (``PXP_LOG_FORMAT``) instead of Celery's own logging set-up."""
    settings = get_settings()
    jsonlog.configure(settings.log_format, loglevel or settings.log_level)


@worker_ready.connect
def _start_reconciler(**_kwargs: Any) -> None:
    global _reconciler, _webhooks
    from worker import reconciler, webhooks
    from worker.jobbody import WorkerContext

    ctx = WorkerContext.from_settings(get_settings())
    _reconciler = reconciler.start_thread(ctx)
    _webhooks = webhooks.start_thread(ctx.session_factory, ctx.settings)
    log.info("reconciler and webhook delivery started")


@worker_shutdown.connect
def _stop_reconciler(**_kwargs: Any) -> None:
    for running in (_reconciler, _webhooks):
        if running is not None:
            running[1].set()
