"""The exporter's HTTP(S) endpoint: paths, web-config.yml (TLS, basic auth), no stalls."""
import base64
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Gauge

from mmrwatch.agent import web, webconfig


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d


def _registry():
    reg = CollectorRegistry()
    Gauge("mmrwatch_test_value", "A test gauge.", registry=reg).set(7)
    return reg


def _start(cfg: webconfig.WebConfig, path="/metrics"):
    srv = web.serve("127.0.0.1:0", _registry(), path, lambda: cfg)
    return srv, srv.server_address[1]


def _get(url, headers=None, ctx=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def test_paths_and_headers(tmp_path):
    (tmp_path / "w.yml").write_text("http_server_config:\n  headers:\n"
                                    "    X-Frame-Options: deny\n")
    srv, port = _start(webconfig.load(tmp_path / "w.yml"), "/m")
    try:
        code, body, hdr = _get(f"http://127.0.0.1:{port}/")
        assert code == 200 and 'href="/m"' in body and hdr["X-Frame-Options"] == "deny"
        code, body, hdr = _get(f"http://127.0.0.1:{port}/m")
        assert code == 200 and "mmrwatch_test_value 7.0" in body
        assert hdr["X-Frame-Options"] == "deny"
        assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 404
    finally:
        srv.shutdown()


def test_basic_auth(tmp_path):
    h = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "w.yml").write_text(f"basic_auth_users:\n  prom: '{h}'\n")
    srv, port = _start(webconfig.load(tmp_path / "w.yml"))
    url = f"http://127.0.0.1:{port}/metrics"

    def auth(u, p):
        return {"Authorization": "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()}
    try:
        code, _, hdr = _get(url)
        assert code == 401 and hdr["WWW-Authenticate"].startswith("Basic")
        assert _get(url, auth("prom", "wrong"))[0] == 401
        assert _get(url, auth("nobody", "s3cret"))[0] == 401
        assert _get(url, {"Authorization": "Basic !!!"})[0] == 401
        code, body, _ = _get(url, auth("prom", "s3cret"))
        assert code == 200 and "mmrwatch_test_value" in body
    finally:
        srv.shutdown()


def test_tls_idle_clients_do_not_block_scrapes(certs, tmp_path):
    (tmp_path / "w.yml").write_text(f"tls_server_config:\n  cert_file: {certs / 'cert.pem'}\n"
                                    f"  key_file: {certs / 'key.pem'}\n  min_version: TLS12\n")
    srv, port = _start(webconfig.load(tmp_path / "w.yml"))
    ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # say nothing
    try:
        t0 = time.monotonic()
        for _ in range(5):
            code, body, _ = _get(f"https://127.0.0.1:{port}/metrics", ctx=ctx, timeout=3)
            assert code == 200 and "mmrwatch_test_value" in body
        assert time.monotonic() - t0 < 3
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(f"http://127.0.0.1:{port}/metrics", timeout=3)   # plain HTTP is refused
    finally:
        for s in idle:
            s.close()
        srv.shutdown()


def test_client_certificates_required(certs, tmp_path):
    (tmp_path / "w.yml").write_text(
        f"tls_server_config:\n  cert_file: {certs / 'cert.pem'}\n  key_file: {certs / 'key.pem'}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs / 'cert.pem'}\n")
    srv, port = _start(webconfig.load(tmp_path / "w.yml"))
    url = f"https://127.0.0.1:{port}/metrics"
    try:
        ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _get(url, ctx=ctx)
        ctx.load_cert_chain(certs / "cert.pem", certs / "key.pem")
        assert _get(url, ctx=ctx)[0] == 200
    finally:
        srv.shutdown()


@pytest.mark.parametrize("text,msg", [
    ("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "not supported"),
    ("tls_server_config:\n  cert_file: a.pem\n", "needs both cert_file and key_file"),
    ("tls_server_config:\n  bogus: 1\n", "unknown key tls_server_config.bogus"),
    ("basic_auth_users:\n  prom: plaintext\n", "not a bcrypt hash"),
    ("whatever: 1\n", "unknown key whatever"),
    ("[1, 2\n", "not valid YAML"),
    ("- a\n", "expected a mapping"),
])
def test_bad_web_configs_are_one_line_errors(tmp_path, text, msg):
    (tmp_path / "w.yml").write_text(text)
    with pytest.raises(webconfig.WebConfigError, match=msg) as e:
        webconfig.load(tmp_path / "w.yml")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("addr,want", [("127.0.0.1:19864", ("127.0.0.1", 19864)),
                                       (":9", ("::", 9)), ("[::1]:80", ("::1", 80))])
def test_listen_addresses(addr, want):
    assert web.parse_listen(addr) == want


@pytest.mark.parametrize("addr", ["19864", "host:", "h:99999", "h:x"])
def test_bad_listen_addresses(addr):
    with pytest.raises(web.AddressError):
        web.parse_listen(addr)
