"""ASGI entry point of the gateway: ``uvicorn service.main:app``.

Configured from ``PXP_*`` environment variables; never imports torch.
"""

from service.api.app import create_app

app = create_app()
