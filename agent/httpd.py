"""The exporter's HTTP(S) server: one event loop for every client, a few workers for answers.

Bad clients must not cost a scraper its answer, nor the daemon its memory.  So no thread
ever waits on a client: one loop thread accepts, runs TLS handshakes, reads request heads
and writes responses, all non-blocking; only a complete, well-formed request reaches a
worker (a fixed pool), which renders the answer into memory and hands it back.  What a
client can hold is bounded: ``MAX_CONNS`` connections (at the limit the connection idle the
longest is closed, so a flood of silent connections cannot lock a scraper out),
``MAX_HEAD`` bytes of request head, ``CLIENT_TIMEOUT`` seconds to send it (slowloris) and
as long to read the answer.  Each kind of bad client is logged once, then counted
(``EventLog``): a flood writes one line, not one per connection.
"""
from __future__ import annotations

import collections
import errno
import io
import logging
import queue
import re
import selectors
import socket
import ssl
import threading
import time
from typing import Callable, Optional
from urllib.parse import unquote
from wsgiref.handlers import SimpleHandler

import mmrwatch

from .clientlog import (CLIENT_TIMEOUT, MAX_CONNS, MAX_HEAD, MAX_HEADERS, QUEUE,
                        WORKERS, EventLog)
from .webconfig import WebConfig

log = logging.getLogger("mmrwatch")
BACKLOG = 1024

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/1\.[0-9]")


def _canned(status: str) -> bytes:
    body = status.encode() + b"\n"
    return (b"HTTP/1.0 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status.encode(), len(body), body))


class _Conn:
    __slots__ = ("sock", "client", "state", "buf", "out", "deadline", "listener")

    def __init__(self, sock, client: str, state: str, listener) -> None:
        self.sock, self.client, self.state, self.listener = sock, client, state, listener
        self.buf = bytearray()
        self.out: Optional[memoryview] = None
        self.deadline = time.monotonic() + CLIENT_TIMEOUT


class HTTPServer:
    """Serves ``app`` (WSGI) on already bound, listening sockets; see the module docstring."""

    def __init__(self, socks: list[socket.socket], app: Callable,
                 config: Callable[[], WebConfig], events: Optional[EventLog] = None) -> None:
        self.socks, self.app, self.config = socks, app, config
        self.events = events or EventLog()
        self.max_conns = MAX_CONNS
        self._sel = selectors.DefaultSelector()
        self._conns: "collections.OrderedDict[int, _Conn]" = collections.OrderedDict()
        self._work: "queue.Queue[Optional[tuple[_Conn, dict]]]" = queue.Queue(QUEUE)
        self._done: "queue.Queue[tuple[_Conn, bytes]]" = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._paused_until = 0.0
        self._threads: list[threading.Thread] = []

    @property
    def server_address(self) -> tuple:
        return self.socks[0].getsockname()

    def shutdown(self) -> None:
        self.stop()

    def start(self) -> "HTTPServer":
        for s in self.socks:
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ, s)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._threads = [threading.Thread(target=self._loop, name="mmrwatch-http", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"mmrwatch-http-{i}",
                                           daemon=True) for i in range(WORKERS)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving and close every socket (bounded: never waits on a client)."""
        self._stop.set()
        self._wake()
        self._threads[0].join(timeout)
        for _ in self._threads[1:]:
            try:
                self._work.put_nowait(None)
            except queue.Full:
                break
        for s in self.socks:
            s.close()

    # -- the loop ------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass                         # already full: the loop is awake anyway

    def _loop(self) -> None:
        sweep = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self._paused_until and now >= self._paused_until:
                self._paused_until = 0.0
                for s in self.socks:
                    self._sel.register(s, selectors.EVENT_READ, s)
            if now >= sweep:                  # deadlines, 4 times a second
                self._expire(now)
                sweep = now + 0.25
            for key, _ in self._sel.select(max(0.0, sweep - now)):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                elif isinstance(key.data, _Conn):
                    self._ready(key.data)
                else:
                    self._accept(key.data)
            self._finish_done()
        for c in list(self._conns.values()):
            self._close(c)
        self._sel.close()

    def _accept(self, lsock: socket.socket) -> None:
        ctx: Optional[ssl.SSLContext] = self.config().ssl_context
        for _ in range(64):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._evict():          # out of fds: make room, pause accepting
                        self._pause()
                    return
                continue                           # ECONNABORTED and the like
            if len(self._conns) >= self.max_conns and not self._evict():
                sock.close()
                continue
            sock.setblocking(False)
            client = addr[0] if isinstance(addr, tuple) else "local"
            if ctx is not None:
                try:
                    sock = ctx.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False)
                except (OSError, ValueError):
                    sock.close()
                    continue
            c = _Conn(sock, client, "tls" if ctx is not None else "read", lsock)
            self._conns[sock.fileno()] = c
            self._sel.register(sock, selectors.EVENT_READ, c)
            self._ready(c)

    def _pause(self) -> None:
        """Out of file descriptors with nothing to evict: stop accepting for 0.1 s."""
        if not self._paused_until:
            self._paused_until = time.monotonic() + 0.1
            for s in self.socks:
                self._sel.unregister(s)

    def _want(self, c: _Conn, events: int) -> None:
        try:
            self._sel.modify(c.sock, events, c)
        except KeyError:
            self._sel.register(c.sock, events, c)

    def _evict(self) -> bool:
        """Close the connection idle the longest (still handshaking or sending its head)."""
        for c in self._conns.values():
            if c.state in ("tls", "read"):
                self.events.note("conn_limit", c.client)
                self._close(c)
                return True
        return False

    def _expire(self, now: float) -> None:
        for c in [c for c in self._conns.values() if c.deadline <= now]:
            if c.state in ("tls", "read"):
                self.events.note("slow", c.client)
                self._close(c)
            elif c.state == "write":
                self.events.note("stalled", c.client)
                self._close(c)

    def _close(self, c: _Conn) -> None:
        c.state = "closed"
        self._conns.pop(c.sock.fileno(), None)
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        try:
            c.sock.close()
        except OSError:
            pass

    def _ready(self, c: _Conn) -> None:
        try:
            if c.state == "tls":
                self._handshake(c)
            if c.state == "read":
                self._read(c)
            if c.state == "write":
                self._write(c)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError:
            self.events.note("tls", c.client)
            self._close(c)
        except OSError:
            self._close(c)

    def _handshake(self, c: _Conn) -> None:
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(c, selectors.EVENT_READ)
            raise
        except ssl.SSLWantWriteError:
            self._want(c, selectors.EVENT_WRITE)
            raise
        c.state = "read"
        self._want(c, selectors.EVENT_READ)

    def _read(self, c: _Conn) -> None:
        while True:
            try:
                data = c.sock.recv(8192)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            if not data:
                self._close(c)                   # gone before finishing its request
                return
            c.buf += data
            end = c.buf.find(b"\r\n\r\n")
            if end < 0 and len(c.buf) <= MAX_HEAD:
                continue
            if end < 0 or end > MAX_HEAD:
                self._reply(c, _canned("431 Request Header Fields Too Large"), "too_large")
                return
            environ = self._parse(c, bytes(c.buf[:end]))
            if environ is None:
                self._reply(c, _canned("400 Bad Request"), "malformed")
                return
            c.state = "queued"
            self._sel.unregister(c.sock)        # nothing more to read; a worker answers
            try:
                self._work.put_nowait((c, environ))
            except queue.Full:
                self._reply(c, _canned("503 Service Unavailable"), "overload")
            return

    def _reply(self, c: _Conn, data: bytes, event: str = "") -> None:
        if event:
            self.events.note(event, c.client)
        c.state, c.out = "write", memoryview(data)
        c.deadline = time.monotonic() + CLIENT_TIMEOUT
        self._want(c, selectors.EVENT_WRITE)
        self._write(c)

    def _write(self, c: _Conn) -> None:
        while c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, ssl.SSLWantWriteError):
                return
            c.out = c.out[n:]
        self._close(c)

    def _finish_done(self) -> None:
        while True:
            try:
                c, data = self._done.get_nowait()
            except queue.Empty:
                return
            if c.state == "queued":
                try:
                    self._reply(c, data)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except OSError:
                    self._close(c)

    # -- requests ------------------------------------------------------------------------
    def _parse(self, c: _Conn, head: bytes) -> Optional[dict]:
        """The WSGI environ of a request head, or None when it is not HTTP/1.x."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if (len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2])
                or not parts[1].startswith(b"/") or len(lines) > MAX_HEADERS + 1):
            return None
        try:
            target = parts[1].decode("ascii")
        except UnicodeDecodeError:
            return None
        path, _, query = target.partition("?")
        local = c.listener.getsockname()
        env = {"REQUEST_METHOD": parts[0].decode(), "SCRIPT_NAME": "",
               "PATH_INFO": unquote(path, "iso-8859-1"), "QUERY_STRING": query,
               "SERVER_PROTOCOL": parts[2].decode(), "REMOTE_ADDR": c.client,
               "SERVER_NAME": str(local[0]) if isinstance(local, tuple) else "localhost",
               "SERVER_PORT": str(local[1]) if isinstance(local, tuple) else "",
               "GATEWAY_INTERFACE": "CGI/1.1", "CONTENT_TYPE": "", "CONTENT_LENGTH": ""}
        if isinstance(c.sock, ssl.SSLSocket):
            env["HTTPS"] = "on"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):
                return None
            key = name.decode().upper().replace("-", "_")
            val = value.strip().decode("iso-8859-1")
            if "_" in name.decode():
                continue                    # as wsgiref: no spoofing of CGI variables
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                env[key] = val
            else:
                env["HTTP_" + key] = env["HTTP_" + key] + "," + val if "HTTP_" + key in env \
                    else val
        return env

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None or self._stop.is_set():
                return
            c, environ = item
            try:
                data = self._render(environ)
            except Exception:  # noqa: BLE001 - a bug must cost one answer, not the worker
                log.debug("http: request failed", exc_info=True)
                data = _canned("500 Internal Server Error")
            self._done.put((c, data))
            self._wake()

    def _render(self, environ: dict) -> bytes:
        out = io.BytesIO()
        h = _Handler(io.BytesIO(), out, io.StringIO(), environ, multithread=True,
                     multiprocess=False)
        h.run(self.app)
        data = out.getvalue()
        if environ["REQUEST_METHOD"] == "HEAD":
            data = data[:data.find(b"\r\n\r\n") + 4]
        return data


class _Handler(SimpleHandler):
    server_software = f"mmrwatch/{mmrwatch.__version__}"
    http_version = "1.0"

    def log_exception(self, exc_info) -> None:
        log.debug("http: request failed", exc_info=exc_info)
