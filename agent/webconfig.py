"""``--web.config.file``: the Prometheus exporter-toolkit ``web-config.yml``, in Python.

Operators already have these files for node_exporter (TLS, client CAs, bcrypt basic auth);
mmrwatch reads the same keys.  What Python's ``ssl`` cannot honour (cipher suite and curve
lists, SAN allow-lists) is refused with a clear message rather than silently ignored: a
security setting that is accepted but not applied is worse than an error.
"""
from __future__ import annotations

import hashlib
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


class WebConfigError(Exception):
    """The web configuration file cannot be used (one-line reason)."""


TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
            "max_version", "prefer_server_cipher_suites"}
UNSUPPORTED = {"cipher_suites", "curve_preferences", "client_allowed_sans", "cert", "key",
               "client_ca"}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
               "RequireAnyClientCert": None, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}


# bcrypt checks of credentials not seen before, per client address and in all: a flood of
# wrong passwords costs at most this much CPU (a bcrypt check is tens of ms), and a scraper
# whose credentials were verified once (cached) is never slowed by it
CLIENT_BURST, CLIENT_RATE = 10, 2.0        # checks, checks per second
GLOBAL_BURST, GLOBAL_RATE = 20, 10.0
CACHE = 1024                               # remembered good (and bad) credentials


class _Bucket:
    __slots__ = ("tokens", "t")

    def __init__(self, burst: float) -> None:
        self.tokens, self.t = burst, time.monotonic()

    def take(self, burst: float, rate: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.t) * rate)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class WebConfig:
    ssl_context: Optional[ssl.SSLContext] = None
    users: dict[str, bytes] = field(default_factory=dict)   # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    _ok: set = field(default_factory=set)
    _bad: set = field(default_factory=set)
    _buckets: dict = field(default_factory=dict)            # client -> _Bucket
    _all: _Bucket = field(default_factory=lambda: _Bucket(GLOBAL_BURST))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def authorized(self, user: str, password: str, client: str = "") -> bool:
        """bcrypt check, results cached (a bcrypt check costs tens of ms); checks of new
        credentials are rate-limited per client and in all (over the limit: refused)."""
        if not self.users:
            return True
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(b"%s\0%s\0%s" % (user.encode(), password.encode(), hashed)).digest()
        now = time.monotonic()
        with self._lock:
            if key in self._ok:
                return True
            if key in self._bad:
                return False
            if len(self._buckets) >= CACHE and client not in self._buckets:
                self._buckets.clear()
            bucket = self._buckets.setdefault(client, _Bucket(CLIENT_BURST))
            if not (bucket.take(CLIENT_BURST, CLIENT_RATE, now)
                    and self._all.take(GLOBAL_BURST, GLOBAL_RATE, now)):
                return False
        import bcrypt
        try:
            good = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            good = False
        with self._lock:
            seen = self._ok if good else self._bad
            if len(seen) >= CACHE:
                seen.clear()
            seen.add(key)
        return good


def _load_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError:
        raise WebConfigError("--web.config.file needs PyYAML and bcrypt: "
                             "pip install 'mmrwatch[web]'") from None
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise WebConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise WebConfigError(f"{path}: permission denied") from None
    except yaml.YAMLError as e:
        raise WebConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise WebConfigError(f"{path}: expected a mapping at the top level")
    return doc


def _tls(path: Path, tls: dict) -> Optional[ssl.SSLContext]:
    bad = sorted(set(tls) & UNSUPPORTED)
    if bad:
        raise WebConfigError(f"{path}: tls_server_config.{bad[0]} is not supported by mmrwatch "
                             "(use a TLS proxy if you need it)")
    unknown = sorted(set(tls) - TLS_KEYS)
    if unknown:
        raise WebConfigError(f"{path}: unknown key tls_server_config.{unknown[0]}")
    if not tls:
        return None
    if not tls.get("cert_file") or not tls.get("key_file"):
        raise WebConfigError(f"{path}: tls_server_config needs both cert_file and key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base = path.parent
    try:
        ctx.load_cert_chain(base / tls["cert_file"], base / tls["key_file"])
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(f"{path}: cannot load cert_file/key_file: {e}") from None
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in tls:
            if tls[key] not in TLS_VERSIONS:
                raise WebConfigError(f"{path}: {key} must be one of {', '.join(TLS_VERSIONS)}")
            setattr(ctx, attr, TLS_VERSIONS[tls[key]])
    if "min_version" not in tls:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2     # the toolkit's default
    mode = tls.get("client_auth_type", "NoClientCert")
    if mode not in CLIENT_AUTH:
        raise WebConfigError(f"{path}: client_auth_type must be one of {', '.join(CLIENT_AUTH)}")
    if CLIENT_AUTH[mode] is None:
        raise WebConfigError(f"{path}: client_auth_type RequireAnyClientCert is not supported "
                             "(use RequireAndVerifyClientCert)")
    ctx.verify_mode = CLIENT_AUTH[mode]
    if mode != "NoClientCert":
        if not tls.get("client_ca_file"):
            raise WebConfigError(f"{path}: client_auth_type {mode} needs client_ca_file")
        try:
            ctx.load_verify_locations(base / tls["client_ca_file"])
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(f"{path}: cannot load client_ca_file: {e}") from None
    return ctx


def load(path: Optional[Path]) -> WebConfig:
    """Parse and validate ``path`` (None: plain HTTP, no auth)."""
    if path is None:
        return WebConfig()
    doc = _load_yaml(path)
    unknown = sorted(set(doc) - {"tls_server_config", "http_server_config", "basic_auth_users"})
    if unknown:
        raise WebConfigError(f"{path}: unknown key {unknown[0]}")
    cfg = WebConfig(ssl_context=_tls(path, doc.get("tls_server_config") or {}))
    http = doc.get("http_server_config") or {}
    if set(http) - {"http2", "headers"}:
        raise WebConfigError(f"{path}: unknown key http_server_config."
                             f"{sorted(set(http) - {'http2', 'headers'})[0]}")
    cfg.headers = {str(k): str(v) for k, v in (http.get("headers") or {}).items()}
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{path}: basic_auth_users must map user names to bcrypt hashes")
    if users:
        try:
            import bcrypt  # noqa: F401  (fail now, not on the first scrape)
        except ImportError:
            raise WebConfigError("basic_auth_users needs bcrypt: pip install 'mmrwatch[web]'") \
                from None
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{path}: basic_auth_users.{user} is not a bcrypt hash "
                                 "(make one with: htpasswd -nBC 10 '' | tr -d ':\\n')")
        cfg.users[str(user)] = hashed.encode()
    return cfg
