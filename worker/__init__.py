"""Job execution: the Celery app (production), the embedded worker, the shared job body
and the reconciler. May import pxp and service.db/storage/settings/dispatch, never service.api."""
