"""``serve``'s node_exporter-style flags (issue 16 item 1), on real processes and sockets:
``--version``, repeatable ``--web.listen-address`` (port 0: the log names the port bound),
``--web.disable-exporter-metrics``, ``--web.systemd-socket`` (the sd_listen_fds protocol,
driven here by systemd's own ``systemd-socket-activate`` and by hand; the shipped socket unit
is tested under real systemd in tests/test_systemd_units.py), and their one-line errors."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.bed.boots import free_port

SERVE = [sys.executable, "-m", "mmrwatch", "serve", "--vmcore", "/nonexistent/vmcore",
         "--interval", "3600"]


def _get(port: int, host: str = "127.0.0.1") -> str:
    h = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{h}:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _start(*args: str, **kw) -> tuple[subprocess.Popen, list[str]]:
    """Start serve; return it and its first log lines up to the last 'listening' one."""
    p = subprocess.Popen([*SERVE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, **kw)
    lines = []
    while True:
        ln = p.stderr.readline()
        if not ln:
            break
        lines.append(ln)
        if "check failed" in ln:          # the first check (no kernel) comes after listening
            break
    return p, lines


def _stop(p: subprocess.Popen) -> tuple[int, str]:
    p.terminate()
    _, err = p.communicate(timeout=30)
    return p.returncode, err


def _names(body: str) -> set[str]:
    return {ln.split("{")[0].split(" ")[0] for ln in body.splitlines()
            if ln and not ln.startswith("#")}


def test_version():
    res = subprocess.run([sys.executable, "-m", "mmrwatch", "serve", "--version"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == ""
    first = res.stdout.splitlines()[0]
    import drgn
    import mmrwatch
    assert first.startswith(f"mmrwatch, version {mmrwatch.__version__} (python ")
    assert f"drgn {drgn.__version__}" in first
    assert "platform: linux/" in res.stdout


def test_repeated_listen_addresses_each_listen_and_port_0_is_logged():
    p, lines = _start("--web.listen-address", "127.0.0.1:0", "--web.listen-address", "[::1]:0")
    try:
        got = [re.search(r"listening on (\S+):(\d+)/metrics \(plain HTTP\)", ln)
               for ln in lines if "listening on" in ln]
        assert [m.group(1) for m in got] == ["127.0.0.1", "[::1]"], lines
        ports = [int(m.group(2)) for m in got]
        assert 0 not in ports and ports[0] != ports[1]
        for (host, port) in zip(("127.0.0.1", "::1"), ports):
            assert "mmrwatch_collector_success" in _get(port, host)
    finally:
        rc, err = _stop(p)
    assert rc == 0, err


def test_exporter_metrics_on_by_default_and_off_with_the_flag():
    port = free_port()
    p, _ = _start("--web.listen-address", f"127.0.0.1:{port}")
    try:
        names = _names(_get(port))
    finally:
        _stop(p)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info",
            "python_gc_collections_total", "mmrwatch_http_client_errors_total"} <= names
    p, _ = _start("--web.listen-address", f"127.0.0.1:{port}",
                  "--web.disable-exporter-metrics")
    try:
        names = _names(_get(port))
    finally:
        rc, err = _stop(p)
    assert rc == 0, err
    assert not [n for n in names if n.startswith(("process_", "python_", "mmrwatch_http_"))]
    assert {"mmrwatch_collector_success", "mmrwatch_build_info"} <= names


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="no systemd tools")
def test_systemd_socket_activation_by_systemds_own_tool():
    """systemd-socket-activate (systemd's implementation of the passing side) listens, sets
    LISTEN_FDS/LISTEN_PID and execs us: the daemon serves on that socket, binds nothing."""
    port = free_port()
    p = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port}", *SERVE,
                          "--web.systemd-socket"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        # it binds, then waits for the first connection before it execs us
        deadline = time.monotonic() + 30
        while True:
            try:
                body = _get(port)
                break
            except OSError:
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.2)
        assert "mmrwatch_collector_success" in body
        time.sleep(0.5)
        assert "mmrwatch_collector_success" in _get(port)      # and keeps serving
    finally:
        rc, err = _stop(p)
    assert rc == 0, err
    assert f"listening on 127.0.0.1:{port}/metrics (systemd socket) (plain HTTP)" in err, err


def test_systemd_socket_by_hand_and_listen_address_ignored():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    port = s.getsockname()[1]
    other = free_port()
    fd = s.fileno()

    def child():
        os.dup2(fd, 3)
    p = subprocess.Popen(["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh", *SERVE,
                          "--web.systemd-socket", "--web.listen-address", f"127.0.0.1:{other}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=child, pass_fds=(3,))
    s.close()                                 # the child holds it now
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert "mmrwatch_collector_success" in _get(port)
                break
            except OSError:
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.2)
        with pytest.raises(OSError):
            _get(other)                       # ignored, as node_exporter ignores it
    finally:
        rc, err = _stop(p)
    assert rc == 0, err
    assert "--web.listen-address ignored" in err


@pytest.mark.parametrize("env,why", [
    ({}, "no sockets passed by systemd (LISTEN_FDS unset"),
    ({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, "LISTEN_PID=1 is not this process"),
    ({"LISTEN_FDS": "x", "LISTEN_PID": "$$"}, "bad LISTEN_FDS='x'"),
    ({"LISTEN_FDS": "1", "LISTEN_PID": "$$"}, "fd 3 is not a socket"),
])
def test_systemd_socket_errors_are_one_line_exit_71(env, why):
    assigns = " ".join(f"{k}={v}" for k, v in env.items())
    res = subprocess.run(["sh", "-c", f'{assigns} exec "$@" 3</dev/null' if "fd 3" in why
                          else f'{assigns} exec "$@"', "sh", *SERVE, "--web.systemd-socket"],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")})
    assert res.returncode == 71, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], res.stderr


def test_udp_socket_is_refused():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    fd = s.fileno()

    def child():
        os.dup2(fd, 3)
    res = subprocess.run(["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh", *SERVE,
                          "--web.systemd-socket"], capture_output=True, text=True, timeout=60,
                         preexec_fn=child, pass_fds=(3,))
    s.close()
    assert res.returncode == 71
    assert "not a listening stream socket" in res.stderr and len(res.stderr.splitlines()) == 1


def test_second_listen_address_in_use_is_one_line_exit_71():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    res = subprocess.run([*SERVE, "--web.listen-address", "127.0.0.1:0", "--web.listen-address",
                          f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    busy.close()
    assert res.returncode == 71
    assert res.stderr.strip() == (f"mmrwatch: cannot listen on 127.0.0.1:{port}: "
                                  "Address already in use"), res.stderr
