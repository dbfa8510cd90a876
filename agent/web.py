"""The exporter's HTTP(S) endpoint: landing page, metrics path, TLS, basic auth.

prometheus-client's own ``start_http_server(certfile=...)`` wraps the *listening* socket, so
the TLS handshake runs inside ``accept()`` on the single serving thread: one client that
connects and says nothing freezes every later scrape.  Here the accept thread only accepts;
each connection gets its own thread, a socket timeout, and does its handshake there.
"""
from __future__ import annotations

import base64
import binascii
import html
import logging
import socket
import ssl
import threading
from typing import Callable, Iterable, Optional
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .webconfig import WebConfig

log = logging.getLogger("mmrwatch")
CONN_TIMEOUT = 10.0     # seconds a client may take for its handshake and request


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


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


class Server(ThreadingWSGIServer):
    """Thread per connection; TLS handshakes happen in that thread, never in accept()."""

    config: Callable[[], WebConfig] = staticmethod(WebConfig)
    request_queue_size = 128

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(CONN_TIMEOUT)
        ctx: Optional[ssl.SSLContext] = self.config().ssl_context
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        """A client that times out or fails its handshake is not the operator's problem."""
        log.debug("connection from %s failed", client_address, exc_info=True)


def landing_page(path: str) -> bytes:
    p = html.escape(path)
    return (f"<!DOCTYPE html><html><head><title>mmrwatch</title></head><body>"
            f"<h1>mmrwatch</h1><p>Checks that firmware-critical MMIO (UV MMRs, EFI runtime "
            f"regions) is mapped in both efi_mm and init_mm.</p>"
            f"<p><a href=\"{p}\">Metrics</a></p></body></html>\n").encode()


def app(registry: CollectorRegistry, telemetry_path: str, config: Callable[[], WebConfig]):
    """WSGI app: auth first, then the landing page, the metrics, or 404."""
    metrics = make_wsgi_app(registry)

    def wsgi(environ, start_response) -> Iterable[bytes]:
        cfg = config()
        extra = list(cfg.headers.items())

        def respond(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8",
                    headers: Iterable[tuple[str, str]] = ()):
            start_response(status, [("Content-Type", ctype), *headers, *extra])
            return [body]

        if cfg.users and not _authorized(cfg, environ.get("HTTP_AUTHORIZATION", "")):
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


def _authorized(cfg: WebConfig, header: str) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and cfg.authorized(user, password)


def serve(listen: str, registry: CollectorRegistry, telemetry_path: str,
          config: Callable[[], WebConfig]) -> Server:
    """Bind now (errors surface at startup), serve in a daemon thread."""
    host, port = parse_listen(listen)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, sockaddr = infos[0][0], infos[0][4]

    class _Srv(Server):
        address_family = family
    _Srv.config = staticmethod(config)      # re-read per connection: SIGHUP swaps it
    srv = _Srv(sockaddr[:2], _Quiet)
    srv.set_app(app(registry, telemetry_path, config))
    threading.Thread(target=srv.serve_forever, name="mmrwatch-http", daemon=True).start()
    return srv
