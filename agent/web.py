"""The exporter's HTTP(S) endpoint: listen addresses, landing page, metrics path, basic auth.

prometheus-client's own ``start_http_server(certfile=...)`` wraps the *listening* socket, so
the TLS handshake runs inside ``accept()`` on the single serving thread: one client that
connects and says nothing freezes every later scrape.  Here the server (``httpd``) never
waits on a client at all; this module binds its sockets and holds the WSGI app.
"""
from __future__ import annotations

import base64
import binascii
import html
import socket
from typing import Callable, Iterable, Optional

from prometheus_client import CollectorRegistry, make_wsgi_app

from .httpd import BACKLOG, EventLog, HTTPServer
from .webconfig import WebConfig


class AddressError(ValueError):
    """A ``--web.listen-address`` that cannot be parsed."""


def parse_listen(addr: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces, as in Go exporters)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AddressError(f"bad listen address {addr!r} (want HOST:PORT, e.g. 127.0.0.1:19864)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or "::"), int(port)


def bind(addr: str) -> socket.socket:
    """A listening socket on ``addr`` (port 0: the kernel picks one; see ``display``)."""
    host, port = parse_listen(addr)
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)   # ":port": v4 too
        s.bind(sockaddr)
        s.listen(BACKLOG)
    except BaseException:
        s.close()
        raise
    return s


def display(sockaddr) -> str:
    """``127.0.0.1:19864`` / ``[::1]:19864`` for a bound socket's address."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 4:
        return f"[{sockaddr[0]}]:{sockaddr[1]}"
    if isinstance(sockaddr, tuple):
        return f"{sockaddr[0]}:{sockaddr[1]}"
    return str(sockaddr) or "unix socket"


def landing_page(path: str) -> bytes:
    p = html.escape(path)
    return (f"<!DOCTYPE html><html><head><title>mmrwatch</title></head><body>"
            f"<h1>mmrwatch</h1><p>Checks that firmware-critical MMIO (UV MMRs, EFI runtime "
            f"regions) is mapped in both efi_mm and init_mm.</p>"
            f"<p><a href=\"{p}\">Metrics</a></p></body></html>\n").encode()


def app(registry: CollectorRegistry, telemetry_path: str, config: Callable[[], WebConfig],
        events: Optional[EventLog] = None):
    """WSGI app: auth first, then the landing page, the metrics, or 404."""
    metrics = make_wsgi_app(registry)

    def wsgi(environ, start_response) -> Iterable[bytes]:
        cfg = config()
        extra = list(cfg.headers.items())

        def respond(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8",
                    headers: Iterable[tuple[str, str]] = ()):
            start_response(status, [("Content-Type", ctype), *headers, *extra])
            return [body]

        client = environ.get("REMOTE_ADDR", "")
        if cfg.users and not _authorized(cfg, environ.get("HTTP_AUTHORIZATION", ""), client):
            if events is not None:
                events.note("unauthorized", client)
            return respond("401 Unauthorized", b"Unauthorized\n",
                           headers=[("WWW-Authenticate", 'Basic realm="mmrwatch"')])
        path = environ.get("PATH_INFO") or "/"
        if path == telemetry_path:
            def start(status, headers, exc_info=None):
                return start_response(status, list(headers) + extra, exc_info)
            return metrics(environ, start)
        if path == "/":
            return respond("200 OK", landing_page(telemetry_path), "text/html; charset=utf-8")
        return respond("404 Not Found", b"Not Found\n")
    return wsgi


def _authorized(cfg: WebConfig, header: str, client: str = "") -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return bool(sep) and cfg.authorized(user, password, client)


def serve(listen, registry: CollectorRegistry, telemetry_path: str,
          config: Callable[[], WebConfig], events: Optional[EventLog] = None) -> HTTPServer:
    """Serve on ``listen`` (bound sockets, or one address to bind now) in daemon threads."""
    socks = [bind(listen)] if isinstance(listen, str) else list(listen)
    events = events or EventLog()
    return HTTPServer(socks, app(registry, telemetry_path, config, events), config,
                      events).start()
