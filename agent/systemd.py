"""systemd integration without dependencies: sd_notify, the watchdog, socket activation,
journald logging.

``sd_notify`` is one datagram to ``$NOTIFY_SOCKET`` (sd_notify(3)); outside systemd it is a
no-op.  ``listen_fds`` is sd_listen_fds(3): the sockets a ``.socket`` unit passed us.  Under journald (``$JOURNAL_STREAM`` names our stderr) log lines carry a ``<N>``
syslog priority prefix and no timestamp, so ``journalctl -p warning`` works; elsewhere they
are logfmt (or JSON) with a timestamp, like the Go exporters' ``--log.format``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from typing import Optional

PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
            logging.DEBUG: 7}


def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to the service manager; False outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError:
        return False
    return True


SD_LISTEN_FDS_START = 3


class SocketActivationError(Exception):
    """No usable sockets were passed by systemd (one-line reason)."""


def listen_fds(unset: bool = True) -> list[socket.socket]:
    """The listening sockets systemd passed (``LISTEN_FDS``, from fd 3, for ``LISTEN_PID``).

    As sd_listen_fds(3) with ``unset_environment``: the variables are removed so that no
    child inherits them, and the fds are made close-on-exec.  Each must be a listening
    stream socket (what ``ListenStream=`` makes)."""
    pid, n = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    if unset:
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
    if not n:
        raise SocketActivationError("--web.systemd-socket: no sockets passed by systemd "
                                    "(LISTEN_FDS unset: start the service through "
                                    "mmrwatch.socket)")
    if pid != str(os.getpid()):
        raise SocketActivationError(f"--web.systemd-socket: LISTEN_PID={pid or '(unset)'} is "
                                    f"not this process ({os.getpid()})")
    if not n.isdigit() or int(n) < 1:
        raise SocketActivationError(f"--web.systemd-socket: bad LISTEN_FDS={n!r}")
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(n)):
        try:
            os.set_inheritable(fd, False)
            s = socket.socket(fileno=fd)
        except OSError as e:
            raise SocketActivationError(f"--web.systemd-socket: fd {fd} is not a socket "
                                        f"({e.strerror})") from None
        if s.type != socket.SOCK_STREAM or not s.getsockopt(socket.SOL_SOCKET,
                                                             socket.SO_ACCEPTCONN):
            s.detach()
            raise SocketActivationError(f"--web.systemd-socket: fd {fd} is not a listening "
                                        "stream socket (use ListenStream= in the .socket unit)")
        socks.append(s)
    return socks


def watchdog_interval() -> Optional[float]:
    """Seconds between watchdog pings (half of WatchdogSec), or None when not enabled."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def under_journald(stream=sys.stderr) -> bool:
    """True when ``stream`` is the journal stream systemd connected us to."""
    js = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, journald: bool) -> None:
        super().__init__()
        self.fmt, self.journald = fmt, journald

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        level = record.levelname.lower()
        if self.fmt == "json":
            doc = {"level": level, "msg": msg}
            if not self.journald:
                doc = {"ts": self._ts(record), **doc}
            line = json.dumps(doc)
        else:
            line = f"level={level} msg={json.dumps(msg)}"
            if not self.journald:
                line = f"ts={self._ts(record)} {line}"
        if record.exc_info:
            line += " " + json.dumps(self.formatException(record.exc_info))
        if self.journald:
            line = f"<{PRIORITY.get(record.levelno, 6)}>{line}"
        return line

    @staticmethod
    def _ts(record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """Configure the ``mmrwatch`` logger for a daemon (stderr only; stdout stays clean)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt, under_journald()))
    log = logging.getLogger("mmrwatch")
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
