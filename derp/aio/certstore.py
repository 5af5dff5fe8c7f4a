"""The derper's certificate while it runs, in every `--certmode`: which `ssl.SSLContext` new handshakes
get, swapped without a restart; ACME challenge answers; manual certificate files watched for changes;
the self-signed pair kept in `--certdir`; and the certificate metrics.

The swap: every context this store makes carries an SNI callback (OpenSSL calls it for every handshake,
with or without SNI) that moves the handshake onto the newest context. The listener keeps the context it
was started with; connections already up keep the context they shook hands with, so a swap drops none.

TLS-ALPN-01 (RFC 8737): while a validation is pending, the lean TLS listener peeks at each ClientHello
(`derp.aio.hellopeek`) and gives a handshake that offers only `acme-tls/1` for a pending name the
validation context (no SNI callback, so it stays). HTTP-01 tokens are answered on `--http-port`.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import ssl
import tempfile
from typing import Any, Callable

from derp.aio.atomicfile import write_atomic
from derp.aio.tls import load_server_context, server_context
from derp.certpem import pem_certificates, validity
from derp.errors import ParseError, UsageError
from derp.tlshello import ClientHello

log = logging.getLogger("derper.certs")
HTTP01_PREFIX = "/.well-known/acme-challenge/"
WATCH_INTERVAL = 2.0


def utc_text(ts: float | None) -> str:
    if ts is None:
        return "unknown"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def context_from_pem(cert_pem: bytes, key_pem: bytes, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server context from PEM bytes (ssl loads only files: a private temporary pair, removed at once)."""
    with tempfile.TemporaryDirectory(prefix="derper-") as d:
        crt, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        write_atomic(crt, cert_pem, 0o600)
        write_atomic(key, key_pem, 0o600)
        ctx = server_context(crt, key)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


class CertStore:
    """The contexts the listener serves from (see the module docstring)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.not_before: float | None = None
        self.not_after: float | None = None
        self.counters = {"reloads": 0, "reload_failures": 0, "acme_ok": 0, "acme_failed": 0,
                         "alpn_validations": 0, "http01_validations": 0}
        self.alpn_contexts: dict[str, ssl.SSLContext] = {}
        self.http_tokens: dict[str, bytes] = {}
        self.files: tuple[str, str] | None = None
        self.pem: tuple[bytes, bytes] | None = None   # (chain, key) PEM now served: DERP over QUIC's too
        self._files_sig: Any = None
        self.on_hup: Callable[[], None] | None = None
        self.on_start: list[Callable[[], None]] = []
        self.tasks: list[asyncio.Task] = []
        self.current = self._adopt(server_context(None, None))

    # ---- the served context ------------------------------------------------------------------------
    def _adopt(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        ctx.sni_callback = self._pick
        ctx.hello_router = self          # read by derp.aio.tlstransport.TlsListener
        return ctx

    def _pick(self, sslobj: Any, _name: str | None, ctx: ssl.SSLContext) -> None:
        current = self.current
        if ctx is not current:
            sslobj.context = current

    def install(self, ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes | None = None) -> None:
        """Serve `ctx` (built by this store) to every new handshake from now on; with `key_pem`, the pair is
        also what new QUIC connections get (derp.aio.quic_server)."""
        try:
            self.not_before, self.not_after = validity(pem_certificates(cert_pem)[0])
        except ParseError:
            self.not_before = self.not_after = None
        self.current = self._adopt(ctx)
        self.pem = (cert_pem, key_pem) if key_pem is not None else None

    def load_files(self, cert_path: str, key_path: str, hint: str = "") -> None:
        """Load and serve a certificate/key pair; on any problem raise a one-line UsageError naming the file
        (`derp.aio.tls.load_server_context`, `hint` added to 'does not exist') and keep the old pair."""
        ctx = load_server_context(cert_path, key_path, hint)
        try:
            with open(cert_path, "rb") as fh:
                pem = fh.read()
            with open(key_path, "rb") as fh:
                key = fh.read()
        except OSError as exc:
            raise UsageError(f"cannot read certificate {cert_path}: {(exc.strerror or str(exc)).lower()}") from None
        self.install(ctx, pem, key)

    @property
    def has_certificate(self) -> bool:
        return self.not_after is not None

    def start(self, watch_interval: float = WATCH_INTERVAL) -> None:
        """Once the listeners are up: watch the manual files (0: only SIGHUP), start the ACME manager."""
        if self.files is not None and watch_interval > 0:
            self.tasks.append(asyncio.create_task(self.run_watch(watch_interval)))
        for fn in self.on_start:
            fn()

    # ---- manual certificates: watched files and SIGHUP ------------------------------------------------
    def watch_files(self, cert_path: str, key_path: str, hint: str = "") -> None:
        self.files = (cert_path, key_path)
        self._files_sig = self._signature()
        self.load_files(cert_path, key_path, hint)

    def _signature(self) -> Any:
        assert self.files is not None
        sig = []
        for path in self.files:
            try:
                st = os.stat(path)
            except OSError:
                return None
            sig.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(sig)

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read the watched files (or run the on_hup hook); on failure keep serving the old certificate."""
        if self.on_hup is not None:
            self.on_hup()
        if self.files is None:
            return False
        self._files_sig = self._signature()
        cert_path, key_path = self.files
        try:
            self.load_files(cert_path, key_path)
        except UsageError as exc:
            self.counters["reload_failures"] += 1
            log.error("cannot reload %s (%s), still serving the certificate valid until %s: %s",
                      cert_path, why, utc_text(self.not_after), exc)
            return False
        self.counters["reloads"] += 1
        log.info("reloaded %s (%s); new handshakes get the certificate valid until %s", cert_path, why,
                 utc_text(self.not_after))
        return True

    async def run_watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Reload when the files changed and then held still for one interval (a half-written pair waits)."""
        pending: Any = None
        while True:
            await asyncio.sleep(interval)
            sig = self._signature()
            if sig is None or sig == self._files_sig:
                pending = None
            elif sig == pending:
                self.reload("files changed")
                pending = None
            else:
                pending = sig

    # ---- ACME challenges ----------------------------------------------------------------------------
    def wants_hello(self) -> bool:
        return bool(self.alpn_contexts)

    def context_for_hello(self, hello: ClientHello | None) -> ssl.SSLContext:
        if hello is not None and hello.is_acme_validation:
            ctx = self.alpn_contexts.get((hello.server_name or "").lower().rstrip("."))
            if ctx is not None:
                self.counters["alpn_validations"] += 1
                return ctx
        return self.current

    def http01_answer(self, path: str) -> bytes | None:
        if not path.startswith(HTTP01_PREFIX):
            return None
        answer = self.http_tokens.get(path[len(HTTP01_PREFIX):])
        if answer is not None:
            self.counters["http01_validations"] += 1
        return answer

    # ---- metrics ------------------------------------------------------------------------------------
    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        if self.not_after is not None:
            yield GaugeMetricFamily("derp_tls_cert_expiry_timestamp_seconds",
                                    "notAfter of the certificate new TLS handshakes get (Unix time)",
                                    value=self.not_after)
        reloads = CounterMetricFamily("derp_tls_cert_reloads", "Reloads of --certmode manual files (file "
                                      "change or SIGHUP), by result", labels=["result"])
        reloads.add_metric(["ok"], self.counters["reloads"])
        reloads.add_metric(["failed"], self.counters["reload_failures"])
        yield reloads
        acme = CounterMetricFamily("derp_acme_orders", "ACME issuance and renewal attempts, by result "
                                   "(a failed one keeps serving the previous certificate)", labels=["result"])
        acme.add_metric(["ok"], self.counters["acme_ok"])
        acme.add_metric(["failed"], self.counters["acme_failed"])
        yield acme
        answered = CounterMetricFamily("derp_acme_validations", "ACME validation requests answered, by "
                                       "challenge type", labels=["challenge"])
        answered.add_metric(["tls-alpn-01"], self.counters["alpn_validations"])
        answered.add_metric(["http-01"], self.counters["http01_validations"])
        yield answered


def leaf_sha256(cert_path: str) -> str:
    """Hex SHA-256 of the file's first (leaf) certificate in DER: a DERP map's `CertName: sha256-raw:<hex>`."""
    with open(cert_path, "rb") as fh:
        return hashlib.sha256(pem_certificates(fh.read())[0]).hexdigest()


def selfsigned_files(certdir: str, hostname: str) -> tuple[str, str]:
    """`<certdir>/<hostname>.crt/.key`, generated when missing and kept, so the `CertName` pin (the leaf's
    SHA-256) survives restarts."""
    crt = os.path.join(certdir, hostname + ".crt")
    key = os.path.join(certdir, hostname + ".key")
    if os.path.exists(crt) and os.path.exists(key):
        log.debug("self-signed certificate: using %s", crt)   # the map node line follows once it loads
        return crt, key
    from derp.aio import certs   # cryptography is only needed to generate the certificate
    pair = certs.make_cert([hostname])
    os.makedirs(certdir, mode=0o700, exist_ok=True)
    write_atomic(key, pair.key_pem, 0o600)
    write_atomic(crt, pair.cert_pem, 0o644)
    log.info("self-signed certificate: created %s (kept for the next start)", crt)
    return crt, key
