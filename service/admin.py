"""Admin operations on API keys, run against the database directly (no HTTP).

``python -m service.admin create --tenant acme [--name ci]`` prints the new key once;
``revoke <key id>``; ``list [--tenant acme]``; ``webhook-secret --tenant acme [--rotate]``
prints (or replaces, then prints) the tenant's webhook signing secret. ``pxp-service keys`` (:mod:`service.cli`) is this ``main``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from service.db import repo
from service.db.session import make_engine, make_session_factory
from service.settings import Settings, get_settings


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    tenant: str
    key: str


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


@contextmanager
def _session(settings: Settings | None) -> Iterator[Session]:
    settings = settings or get_settings()
    if settings.is_sqlite:
        # Embedded mode: keys may be made before the first `pxp-service serve`; migrating is idempotent.
        from service.db.migrate import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(settings, engine)() as s:
            yield s
    finally:
        engine.dispose()


def create_key(tenant: str, name: str = "", *, settings: Settings | None = None) -> CreatedKey:
    """Create an API key for ``tenant`` (created if new). The plaintext key is only returned here."""
    if not tenant.strip():
        raise ValueError("tenant must not be empty")
    with _session(settings) as s:
        row, plaintext = repo.create_api_key(s, tenant.strip(), name=name)
        s.commit()
        return CreatedKey(key_id=row.id, tenant=tenant.strip(), key=plaintext)


def revoke_key(key_id: str, *, settings: Settings | None = None) -> bool:
    """Revoke a key by its id (the part after ``pxp_``); False if unknown or already revoked."""
    with _session(settings) as s:
        done = repo.revoke_api_key(s, key_id)
        s.commit()
        return done


def webhook_secret(tenant: str, *, rotate: bool = False, settings: Settings | None = None) -> str | None:
    """The tenant's webhook signing secret; a fresh one with ``rotate`` (deliveries signed
    from then on use it, retries included). None for an unknown tenant."""
    with _session(settings) as s:
        secret = repo.webhook_secret(s, tenant.strip(), rotate=rotate)
        s.commit()
        return secret


def list_keys(tenant: str | None = None, *, settings: Settings | None = None) -> list[KeyInfo]:
    with _session(settings) as s:
        return [
            KeyInfo(key_id=k.id, tenant=t, name=k.name, created_at=k.created_at, revoked_at=k.revoked_at)
            for k, t in repo.list_api_keys(s, tenant)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pxp-service keys", description="Manage pxp API keys (PXP_DATABASE_URL)."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", default=None)
    secret = sub.add_parser("webhook-secret", help="print (or --rotate) a tenant's webhook signing secret")
    secret.add_argument("--tenant", required=True)
    secret.add_argument("--rotate", action="store_true", help="replace it first")
    args = parser.parse_args(argv)
    if args.cmd == "webhook-secret":
        value = webhook_secret(args.tenant, rotate=args.rotate)
        if value is None:
            print(f"no tenant {args.tenant}", file=sys.stderr)
            return 1
        print(json.dumps({"tenant": args.tenant, "webhook_secret": value}))
        return 0
    if args.cmd == "create":
        created = create_key(args.tenant, args.name)
        print(json.dumps(asdict(created)))
        return 0
    if args.cmd == "revoke":
        if revoke_key(args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"no active key {args.key_id}", file=sys.stderr)
        return 1
    for info in list_keys(args.tenant):
        print(json.dumps(asdict(info), default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
