"""The Celery application (production mode): ``celery -A worker.celery_app worker``.

Configured from ``PXP_*`` settings by :func:`worker.celery_config.make_celery`; each
worker process also runs the reconciler thread (one of them acts per interval).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from service.settings import get_settings
from worker.celery_config import make_celery

log = logging.getLogger("pxp.worker")

app = make_celery(get_settings())
_reconciler: Any = None


@worker_ready.connect
def _start_reconciler(**_kwargs: Any) -> None:
    global _reconciler
    from worker import reconciler
    from worker.jobbody import WorkerContext

    _reconciler = reconciler.start_thread(WorkerContext.from_settings(get_settings()))
    log.info("reconciler started")


@worker_shutdown.connect
def _stop_reconciler(**_kwargs: Any) -> None:
    if _reconciler is not None:
        _reconciler[1].set()
