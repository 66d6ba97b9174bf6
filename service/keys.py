"""API key format and hashing.

A key reads ``pxp_<id>_<secret>``. ``id`` (16 hex) is the public handle used to look the
key up and to revoke it; only SHA-256 of ``secret`` (32 random bytes) is stored. A fast
hash is enough because the secret is high-entropy random, not a password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "pxp"


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str


def generate() -> tuple[str, str, str]:
    """Return ``(key_id, plaintext key, secret hash)`` for a new key."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}_{key_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(key: str) -> ParsedKey | None:
    parts = key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 16 or not parts[2]:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return ParsedKey(parts[1], parts[2])


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
