"""Run the Alembic migrations programmatically (``python -m service.db.migrate``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` (default: the configured one) to ``revision``."""
    settings = Settings()
    if url is None:
        url = settings.db_url
        if settings.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Migrate the pxp database (PXP_DATABASE_URL).")
    parser.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args(argv)
    upgrade(revision=args.revision)


if __name__ == "__main__":
    main()
