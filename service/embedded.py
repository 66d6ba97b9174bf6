"""``pxp-service serve``: the gateway plus the embedded worker, with no external servers.

With no ``PXP_*`` configuration this is SQLite at ``.pxp/pxp.db``, artifacts under
``.pxp/artifacts`` and a worker child process fed from the database: the same routes,
repository, storage interface and job body as production. It creates the schema with the
Alembic migrations and an API key for the ``default`` tenant, written to
``.pxp/api-key`` (mode 0600), which :class:`pxp.client.PxpClient` picks up by default.

With ``PXP_BROKER_URL`` set, ``serve`` runs only the gateway (Celery workers run the
jobs) and leaves migrations to ``python -m service.db.migrate``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pxp import jsonlog
from service.db import repo
from service.db.session import make_engine, make_session_factory
from service.settings import Settings

DEFAULT_TENANT = "default"


def ensure_default_key(settings: Settings) -> str:
    """Return the key in ``settings.api_key_file`` if it is still valid, else create and write one."""
    from service import keys

    path = settings.api_key_file
    engine = make_engine(settings.db_url)
    factory = make_session_factory(settings, engine)
    with factory() as s:
        if path.is_file():
            existing = path.read_text().strip()
            parsed = keys.parse(existing)
            if parsed is not None:
                row = repo.active_key(s, parsed.key_id)
                if row is not None and keys.matches(parsed.secret, row.secret_hash):
                    engine.dispose()
                    return existing
        _row, plaintext = repo.create_api_key(s, DEFAULT_TENANT, name="embedded default key")
        s.commit()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(plaintext + "\n")
    engine.dispose()
    return plaintext


def prepare(settings: Settings, migrate: bool | None = None) -> str | None:
    """Create the data directory and schema (SQLite by default); return the default key in embedded mode."""
    from service.db.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate if migrate is not None else settings.is_sqlite:
        upgrade(settings.db_url)
    return ensure_default_key(settings) if settings.embedded else None


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    data_dir: Path | str | None = None,
    workers: int = 1,
    settings: Settings | None = None,
    migrate: bool | None = None,
    log_level: str = "info",
    pipeline: Callable[..., Any] | None = None,
) -> None:
    """Run the gateway (and, in embedded mode, ``workers`` worker processes) until interrupted.

    ``pipeline`` (a module-level function with the signature of ``pxp.pipeline.run``)
    replaces the real pipeline in the embedded workers; tests pass the scripted one.
    """
    import uvicorn

    from service.api.app import create_app
    from service.dispatch import EmbeddedDispatcher

    if settings is None:
        settings = Settings(data_dir=Path(data_dir)) if data_dir is not None else Settings()
    key = prepare(settings, migrate)
    worker = None
    dispatcher = None
    if settings.embedded:
        from worker.embedded import EmbeddedWorker

        worker = EmbeddedWorker(settings, processes=workers, pipeline=pipeline)
        worker.start()
        dispatcher = EmbeddedDispatcher(alive=worker.alive)
        print(f"pxp: embedded mode, data in {settings.data_dir.resolve()}", file=sys.stderr)
        print(
            f"pxp: API key for tenant '{DEFAULT_TENANT}' in {settings.api_key_file.resolve()}",
            file=sys.stderr,
        )
    del key
    jsonlog.configure(settings.log_format, log_level)
    app = create_app(settings, dispatcher=dispatcher)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turn that into an
    # exception so the worker is stopped below instead of being orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        # Our JSON handler on the root logger formats uvicorn's lines too.
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, log_config=None)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if worker is not None:
            worker.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, *, pipeline: Callable[..., Any] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pxp-service serve", description="Run the pxp service (embedded by default)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", default=None, help="default: $PXP_DATA_DIR or ./.pxp")
    parser.add_argument("--workers", type=int, default=1, help="embedded worker processes")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        data_dir=args.data_dir,
        workers=args.workers,
        log_level=args.log_level,
        pipeline=pipeline,
    )


if __name__ == "__main__":
    main()
