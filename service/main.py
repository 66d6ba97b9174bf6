"""ASGI entry point of the gateway: ``uvicorn service.main:app``.

Configured from ``PXP_*`` environment variables; never imports torch. Logs go to stderr
as JSON lines (``PXP_LOG_FORMAT``, see :mod:`pxp.jsonlog`).
"""

from pxp import jsonlog
from service.api.app import create_app
from service.settings import get_settings

_settings = get_settings()
jsonlog.configure(_settings.log_format, _settings.log_level)
app = create_app(_settings)
