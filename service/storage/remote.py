"""Inputs given as URIs: the allow-list check (gateway, at registration) and the fetch (worker).

A URI is untrusted: only the configured schemes are accepted, credentials in the URI are
refused, and every address the host resolves to must be public unless
``allow_private_addresses`` is set (tests set it for the loopback S3 server). An IPv6
address that carries an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, 6to4 ``2002::/16``, Teredo ``2001::/32``, NAT64 ``64:ff9b::/96``) is public
only if the IPv4 address is; local-use NAT64 ``64:ff9b:1::/48`` never is. The worker
checks again before fetching and at every redirect hop, and connects to the address it
checked (the host is not resolved a second time, so DNS rebinding cannot swap it), with
the URI's host in ``Host`` and TLS SNI/certificate verification.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from pxp.errors import InvalidSpecError, UserError
from service.settings import Settings

MAX_REDIRECTS = 5


class UriNotAllowedError(InvalidSpecError):
    """The URI's scheme, host or address is not allowed by the service's policy."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address routes to or stands for."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _plain_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _address_is_public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded:
            return all(_plain_public(v4) for v4 in embedded)
    return _plain_public(ip)


def check_uri(uri: str, settings: Settings) -> str:
    """Return ``uri`` if the policy allows it, else raise :class:`UriNotAllowedError`."""
    resolve_checked(uri, settings)
    return uri


def resolve_checked(uri: str, settings: Settings) -> list[str]:
    """Check ``uri`` against the policy and return the addresses its host resolved to (all
    of them allowed); raise :class:`UriNotAllowedError` otherwise."""
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
    try:
        infos = socket.getaddrinfo(host, port or (443 if scheme == "https" else 80), proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        if settings.allow_private_addresses:
            return []
        raise UriNotAllowedError(f"cannot resolve host {host!r}: {exc}") from None
    addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.allow_private_addresses:
        for addr in addrs:
            if not _address_is_public(addr):
                raise UriNotAllowedError(f"host {host!r} resolves to non-public address {addr}")
    return addrs


def pinned_request(url: str, addrs: list[str]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL, headers and httpx extensions that reach ``url``'s host at ``addrs[0]``.

    The URL names the IP; ``Host`` keeps the original host, and for https the
    ``sni_hostname`` extension makes TLS send and verify the original name.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not addrs:
        return url, {}, {}
    addr = addrs[0].split("%", 1)[0]
    ip_host = f"[{addr}]" if ":" in addr else addr
    netloc = ip_host if parts.port is None else f"{ip_host}:{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host:
        host_header = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme.lower() == "https" else {}
    return pinned, {"Host": host_header}, extensions


def check_callback_url(url: str, settings: Settings) -> str:
    """A job's ``callback_url``: a ``callback_url_schemes`` scheme, then the address policy of
    :func:`check_uri` (no private addresses unless ``allow_private_addresses``)."""
    resolve_callback(url, settings)
    return url


def resolve_callback(url: str, settings: Settings) -> list[str]:
    """:func:`check_callback_url`, returning the checked addresses (to connect to, pinned)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in settings.callback_url_schemes:
        raise UriNotAllowedError(
            f"callback URL scheme {scheme or '(none)'!r} is not allowed; allowed: {settings.callback_url_schemes}"
        )
    return resolve_checked(url, settings.model_copy(update={"allowed_uri_schemes": [scheme]}))


def fetch_uri(
    uri: str,
    dest: Path,
    settings: Settings,
    *,
    max_bytes: int,
    error_cls: type[UserError] = InvalidSpecError,
) -> str:
    """Download ``uri`` to ``dest`` (at most ``max_bytes``); return the sha256 of the body.

    Redirects are followed by hand so that each hop passes :func:`check_uri`, and each
    hop connects to the address that was checked (:func:`pinned_request`).
    """
    import httpx

    url = uri
    with httpx.Client(timeout=settings.uri_timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            resp = _send_pinned(client, url, resolve_checked(url, settings))
            try:
                if resp.is_redirect:
                    url = urljoin(url, resp.headers.get("location", ""))
                    continue
                return _save(resp, uri, dest, max_bytes, error_cls)
            finally:
                resp.close()
    raise error_cls(f"too many redirects fetching {uri}")


def _send_pinned(client: Any, url: str, addrs: list[str]) -> Any:
    """GET ``url`` at the first of the checked ``addrs`` that accepts a connection."""
    import httpx

    candidates: list[list[str]] = [[a] for a in addrs] or [[]]
    for i, pin in enumerate(candidates):
        target, headers, extensions = pinned_request(url, pin)
        request = client.build_request("GET", target, headers=headers, extensions=extensions)
        try:
            return client.send(request, stream=True)
        except httpx.ConnectError:
            if i == len(candidates) - 1:
                raise
    raise AssertionError("unreachable")


def _save(resp: Any, uri: str, dest: Path, max_bytes: int, error_cls: type[UserError]) -> str:
    if resp.status_code != 200:
        raise error_cls(f"fetching {uri} failed: HTTP {resp.status_code}")
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise error_cls(f"{uri} is {declared} bytes; the limit is {max_bytes}")
    digest = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        for chunk in resp.iter_bytes(1024 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise error_cls(f"{uri} exceeds the limit of {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
