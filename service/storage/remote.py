"""Inputs given as URIs: the allow-list check (gateway, at registration) and the fetch (worker).

A URI is untrusted: only the configured schemes are accepted, credentials in the URI are
refused, and every address the host resolves to must be public unless
``allow_private_addresses`` is set (tests set it for the loopback S3 server). The worker
checks again before fetching and at every redirect hop.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pxp.errors import InvalidSpecError, UserError
from service.settings import Settings

MAX_REDIRECTS = 5


class UriNotAllowedError(InvalidSpecError):
    """The URI's scheme, host or address is not allowed by the service's policy."""


def _address_is_public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def check_uri(uri: str, settings: Settings) -> str:
    """Return ``uri`` if the policy allows it, else raise :class:`UriNotAllowedError`."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise UriNotAllowedError(f"malformed URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in settings.allowed_uri_schemes:
        raise UriNotAllowedError(
            f"URI scheme {scheme or '(none)'!r} is not allowed; allowed: {settings.allowed_uri_schemes}"
        )
    if parts.username is not None or parts.password is not None:
        raise UriNotAllowedError("credentials in URIs are not accepted; use a pre-signed URL")
    host = parts.hostname
    if not host:
        raise UriNotAllowedError("URI has no host")
    if settings.allow_private_addresses:
        return uri
    try:
        infos = socket.getaddrinfo(host, port or (443 if scheme == "https" else 80), proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UriNotAllowedError(f"cannot resolve host {host!r}: {exc}") from None
    for info in infos:
        addr = str(info[4][0])
        if not _address_is_public(addr):
            raise UriNotAllowedError(f"host {host!r} resolves to non-public address {addr}")
    return uri


def check_callback_url(url: str, settings: Settings) -> str:
    """A job's ``callback_url``: a ``callback_url_schemes`` scheme, then the address policy of
    :func:`check_uri` (no private addresses unless ``allow_private_addresses``)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in settings.callback_url_schemes:
        raise UriNotAllowedError(
            f"callback URL scheme {scheme or '(none)'!r} is not allowed; allowed: {settings.callback_url_schemes}"
        )
    return check_uri(url, settings.model_copy(update={"allowed_uri_schemes": [scheme]}))


def fetch_uri(
    uri: str,
    dest: Path,
    settings: Settings,
    *,
    max_bytes: int,
    error_cls: type[UserError] = InvalidSpecError,
) -> str:
    """Download ``uri`` to ``dest`` (at most ``max_bytes``); return the sha256 of the body.

    Redirects are followed by hand so that each hop passes :func:`check_uri`.
    """
    import httpx

    url = uri
    digest = hashlib.sha256()
    with httpx.Client(timeout=settings.uri_timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_uri(url, settings)
            with client.stream("GET", url) as resp:
                if resp.is_redirect:
                    url = urljoin(url, resp.headers.get("location", ""))
                    continue
                if resp.status_code != 200:
                    raise error_cls(f"fetching {uri} failed: HTTP {resp.status_code}")
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise error_cls(f"{uri} is {declared} bytes; the limit is {max_bytes}")
                size = 0
                with open(dest, "wb") as out:
                    for chunk in resp.iter_bytes(1024 * 1024):
                        size += len(chunk)
                        if size > max_bytes:
                            raise error_cls(f"{uri} exceeds the limit of {max_bytes} bytes")
                        digest.update(chunk)
                        out.write(chunk)
                return digest.hexdigest()
    raise error_cls(f"too many redirects fetching {uri}")
