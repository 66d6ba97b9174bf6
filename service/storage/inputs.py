"""Input URIs of models and datasets, whatever their scheme: the policy check (gateway, at
registration and job creation; worker, again before fetching) and the fetch (worker).

* ``http(s)://`` goes to :mod:`service.storage.remote` (address policy, redirects re-checked).
* ``s3://bucket/key`` is read with the **service's own** S3 credentials and endpoint
  (``PXP_S3_*``), so it is allowed only where the tenant's entry in ``s3_input_allow``
  (``{"tenant name": ["bucket/prefix", "bucket"]}``) covers the key: a tenant cannot name
  another tenant's objects. The service's artifact bucket (``s3_bucket``) is never readable
  this way, whatever the allow-list says. ``s3`` must also be in ``allowed_uri_schemes``.

Size limits are those of uploads; every refusal is a user error.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pxp.errors import InvalidSpecError, UserError
from service.settings import Settings
from service.storage.backends import s3_client
from service.storage.remote import UriNotAllowedError, check_uri, fetch_uri


def is_s3(uri: str) -> bool:
    return uri[:5].lower() == "s3://"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key``; refuses empty parts and ``.``/``..`` segments."""
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise UriNotAllowedError(f"{uri!r} is not s3://bucket/key")
    if "?" in rest or "#" in rest or any(seg in ("", ".", "..") for seg in key.split("/")):
        raise UriNotAllowedError(f"{uri!r}: the key must be a plain path (no '.', '..', '//', '?', '#')")
    return bucket, key


def _covers(entry: str, bucket: str, key: str) -> bool:
    entry_bucket, _, prefix = entry.strip().partition("/")
    if entry_bucket != bucket:
        return False
    if not prefix:
        return True
    # "team/" covers team/x; "team" covers team/x but not teamB/x.
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    return key.startswith(prefix)


def check_s3_uri(uri: str, tenant: str, settings: Settings) -> str:
    if "s3" not in settings.allowed_uri_schemes:
        raise UriNotAllowedError(f"URI scheme 's3' is not allowed; allowed: {settings.allowed_uri_schemes}")
    bucket, key = parse_s3_uri(uri)
    if bucket == settings.s3_bucket:
        raise UriNotAllowedError(f"bucket {bucket!r} holds the service's own artifacts; it is not an input")
    allowed = settings.s3_input_allow.get(tenant, [])
    if not any(_covers(entry, bucket, key) for entry in allowed):
        raise UriNotAllowedError(f"s3://{bucket}/{key} is not in this tenant's allowed buckets/prefixes")
    return uri


def check_input_uri(uri: str, tenant: str, settings: Settings) -> str:
    """Return ``uri`` if ``tenant`` may use it as an input, else raise :class:`UriNotAllowedError`."""
    if is_s3(uri):
        return check_s3_uri(uri, tenant, settings)
    return check_uri(uri, settings)


def fetch_s3_uri(
    uri: str, dest: Path, settings: Settings, tenant: str, *, max_bytes: int, error_cls: type[UserError]
) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    check_s3_uri(uri, tenant, settings)
    bucket, key = parse_s3_uri(uri)
    digest = hashlib.sha256()
    try:
        obj = s3_client(settings, read_timeout=settings.uri_timeout_s).get_object(Bucket=bucket, Key=key)
        declared = int(obj.get("ContentLength") or 0)
        if declared > max_bytes:
            raise error_cls(f"{uri} is {declared} bytes; the limit is {max_bytes}")
        size = 0
        with open(dest, "wb") as out:
            for chunk in obj["Body"].iter_chunks(1024 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise error_cls(f"{uri} exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise error_cls(f"fetching {uri} failed: {code}") from None
    except BotoCoreError as exc:
        raise error_cls(f"fetching {uri} failed: {exc}") from None
    return digest.hexdigest()


def fetch_input_uri(
    uri: str,
    dest: Path,
    settings: Settings,
    tenant: str,
    *,
    max_bytes: int,
    error_cls: type[UserError] = InvalidSpecError,
) -> str:
    """Download an input URI to ``dest`` (at most ``max_bytes``); return its sha256."""
    if is_s3(uri):
        return fetch_s3_uri(uri, dest, settings, tenant, max_bytes=max_bytes, error_cls=error_cls)
    return fetch_uri(uri, dest, settings, max_bytes=max_bytes, error_cls=error_cls)
