"""URI address policy (defect 8): IPv4 hidden in IPv6 forms, and DNS rebinding between the
check and the fetch."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from service.storage.remote import UriNotAllowedError, check_uri, fetch_uri, pinned_request

STRICT = Settings(allowed_uri_schemes=["http", "https"])


@pytest.mark.parametrize(
    "addr",
    [
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of the metadata service 169.254.169.254
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:a9fe:a9fe",
        "::127.0.0.1",  # IPv4-compatible (deprecated, still routed by some stacks)
        "::a00:1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::c0a8:1",  # NAT64 of 192.168.0.1
        "64:ff9b:1::808:808",  # local-use NAT64
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "::1",
        "fe80::1",
        "fc00::1",
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "0.0.0.0",
    ],
)
def test_addresses_standing_for_private_ipv4_are_refused(addr):
    host = f"[{addr}]" if ":" in addr else addr
    with pytest.raises(UriNotAllowedError, match="non-public"):
        check_uri(f"http://{host}/model.safetensors", STRICT)


@pytest.mark.parametrize("addr", ["2002:808:808::", "64:ff9b::808:808", "2606:4700:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(addr):
    host = f"[{addr}]" if ":" in addr else addr
    assert check_uri(f"http://{host}/x", STRICT) == f"http://{host}/x"


def test_pinned_request_keeps_host_and_sni():
    url, headers, ext = pinned_request("https://example.com:8443/a?b=1", ["93.184.216.34"])
    assert url == "https://93.184.216.34:8443/a?b=1"
    assert headers == {"Host": "example.com:8443"} and ext == {"sni_hostname": "example.com"}
    url, headers, ext = pinned_request("http://example.com/a", ["2606:2800::1"])
    assert url == "http://[2606:2800::1]/a" and headers == {"Host": "example.com"} and ext == {}


@pytest.fixture
def local_server() -> Iterator[tuple[int, list[str]]]:
    seen_hosts: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen_hosts.append(self.headers.get("Host", ""))
            body = b"checkpoint-bytes"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen_hosts
    server.shutdown()
    server.server_close()


def test_the_fetch_connects_to_the_address_that_was_checked(local_server, monkeypatch, tmp_path: Path):
    """A rebinding resolver answers the check with the allowed address and any later lookup
    with another; the fetch must not look the host up again."""
    port, seen_hosts = local_server
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host, *args, **kwargs):
        if host == "rebind.test":
            lookups.append(host)
            addr = "127.0.0.1" if len(lookups) == 1 else "10.255.255.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, args[0] if args else port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    # Private addresses allowed here only because the test server is on loopback; the pinning
    # is the same either way.
    settings = Settings(allowed_uri_schemes=["http"], allow_private_addresses=True, uri_timeout_s=2)
    sha = fetch_uri(f"http://rebind.test:{port}/m", tmp_path / "m", settings, max_bytes=1000)
    assert (tmp_path / "m").read_bytes() == b"checkpoint-bytes" and len(sha) == 64
    assert lookups == ["rebind.test"]
    assert seen_hosts == [f"rebind.test:{port}"]
