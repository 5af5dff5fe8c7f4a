"""`--certmode letsencrypt`: certificates from an ACME CA (RFC 8555), obtained and renewed while the relay
runs, through TLS-ALPN-01 (RFC 8737) on the DERP port or HTTP-01 on `--http-port`.

The protocol (JWS signing, nonces, account, order, polling, finalization) is the `acme` library of the
certbot project; this module owns what is around it: the account key and certificate cache in
`--certdir`, answering the challenge from the running listeners (through `derp.aio.certstore`), and the
schedule (`derp.renewal`). A blocking library call runs in a daemon thread, so the event loop keeps
relaying and a shutdown never waits for a slow CA.

Files in `--certdir`: `acme-account.key` (the account's EC P-256 key, 0600), `acme-<host>.key` (0600),
`acme-<host>.crt` (the full chain) and `acme-<host>.json` (the directory it came from).
A failed attempt keeps serving the certificate in hand, is logged and counted (`derp_acme_orders_total
{result="failed"}`), and is retried with backoff.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from derp.aio.atomicfile import write_atomic
from derp.aio.certstore import CertStore, context_from_pem, utc_text
from derp.aio.tls import server_context
from derp.certpem import pem_certificates, validity
from derp.errors import ParseError, UsageError
from derp.renewal import Renewal, RenewalConfig

log = logging.getLogger("derper.acme")
LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
CHALLENGES = ("tls-alpn-01", "http-01")
ID_PE_ACME_IDENTIFIER = "1.3.6.1.5.5.7.1.31"   # RFC 8737 6.1
USER_AGENT = "wgc-derper"


@dataclass(frozen=True)
class AcmeConfig:
    hostname: str
    certdir: str
    directory: str = LETSENCRYPT
    email: str = ""
    ca_file: str | None = None
    challenge: str = "tls-alpn-01"
    renewal: RenewalConfig = RenewalConfig()
    http_timeout: int = 30
    order_timeout: float = 120.0

    def path(self, suffix: str) -> str:
        return os.path.join(self.certdir, f"acme-{self.hostname}{suffix}")


def config_from_args(args: argparse.Namespace) -> AcmeConfig:
    host = args.hostname.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    if is_ip or host in ("", "localhost") or "." not in host:
        raise UsageError(f"--certmode letsencrypt needs --hostname to be the relay's public DNS name "
                         f"(got {args.hostname!r}; for an IP address use --certmode manual or selfsigned)")
    if not args.acme_directory.startswith("https://"):
        raise UsageError(f"--acme-directory must be an https:// URL (got {args.acme_directory!r})")
    if args.acme_ca_file and not os.path.isfile(args.acme_ca_file):
        raise UsageError(f"--acme-ca-file {args.acme_ca_file!r} does not exist")
    if args.acme_challenge == "http-01" and args.http_port < 0:
        raise UsageError("--acme-challenge http-01 answers on --http-port; it cannot be -1")
    if args.acme_challenge == "tls-alpn-01" and args.tls_engine != "lean":
        raise UsageError("--acme-challenge tls-alpn-01 needs --tls-engine lean (or use --acme-challenge http-01)")
    try:
        os.makedirs(args.certdir, mode=0o700, exist_ok=True)
        if not os.access(args.certdir, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        raise UsageError(f"--certdir {args.certdir!r} must be a writable directory for the ACME account and "
                         f"certificates: {exc.strerror}") from None
    before, fraction = args.acme_renew_before        # typed by the parser (derp.renewal.parse_renew_before)
    retry = args.acme_retry
    renewal = RenewalConfig(renew_before=before, renew_fraction=fraction, retry_min=max(1.0, retry),
                            retry_max=max(3600.0, retry))
    return AcmeConfig(host, args.certdir, args.acme_directory, args.acme_email, args.acme_ca_file,
                      args.acme_challenge, renewal)


# ---- the blocking part: the acme library ----------------------------------------------------------------
def _register_tls_alpn() -> None:
    """acme >= 3 dropped its TLS-ALPN-01 classes: declare the challenge type through the library's own
    registry (a key-authorization challenge whose response body is `{}`), so it parses and is answered."""
    from acme import challenges
    if "tls-alpn-01" in challenges.Challenge.TYPES:
        return

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        typ = "tls-alpn-01"

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        response_cls = TLSALPN01Response
        typ = "tls-alpn-01"

        def validation(self, account_key: Any, **unused: Any) -> str:
            return self.key_authorization(account_key)


def _new_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def account_key(cfg: AcmeConfig) -> Any:
    from cryptography.hazmat.primitives import serialization
    import josepy as jose
    path = os.path.join(cfg.certdir, "acme-account.key")
    if not os.path.exists(path):
        write_atomic(path, _new_key_pem(), 0o600)
        log.info("ACME: created the account key %s", path)
    with open(path, "rb") as fh:
        return jose.JWKEC(key=serialization.load_pem_private_key(fh.read(), None))


def validation_context(name: str, key_authorization: str) -> Any:
    """The RFC 8737 3 answer: a self-signed certificate for `name` with the critical acmeIdentifier
    extension holding SHA-256(key authorization), offered only with ALPN `acme-tls/1`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(ID_PE_ACME_IDENTIFIER),
                                                      b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return context_from_pem(cert.public_bytes(serialization.Encoding.PEM), key_pem, alpn=["acme-tls/1"])


def describe(exc: BaseException) -> str:
    """One line for a failed order: the CA's problem detail where it gave one."""
    from acme import errors as acme_errors
    if isinstance(exc, acme_errors.ValidationError):
        parts = []
        for authzr in exc.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    parts.append(f"{challb.chall.typ} for {authzr.body.identifier.value}: "
                                 f"{challb.error.detail or challb.error.typ}")
        text = "; ".join(parts) or "authorization failed"
    elif isinstance(exc, acme_errors.TimeoutError):
        text = "the order did not complete in time"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def obtain(cfg: AcmeConfig, store: CertStore) -> tuple[bytes, bytes]:
    """One order, start to finish (blocking): returns (full chain PEM, private key PEM)."""
    from acme import client as acme_client, crypto_util, errors as acme_errors, messages
    import josepy as jose
    _register_tls_alpn()
    jwk = account_key(cfg)
    net = acme_client.ClientNetwork(jwk, alg=jose.ES256, verify_ssl=cfg.ca_file or True,
                                    user_agent=USER_AGENT, timeout=cfg.http_timeout)
    acme = acme_client.ClientV2(acme_client.ClientV2.get_directory(cfg.directory, net), net)
    reg = messages.NewRegistration.from_data(email=cfg.email or None, terms_of_service_agreed=True)
    try:
        acme.new_account(reg)
    except acme_errors.ConflictError as exc:   # the key has an account already: use it
        acme.query_registration(messages.RegistrationResource(uri=exc.location, body=reg))
    key_pem = _new_key_pem()
    order = acme.new_order(crypto_util.make_csr(key_pem, [cfg.hostname]))
    added: list[Callable[[], None]] = []
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            name = authz.body.identifier.value.lower()
            challb = next((c for c in authz.body.challenges if c.chall.typ == cfg.challenge), None)
            if challb is None:
                offered = ", ".join(c.chall.typ for c in authz.body.challenges)
                raise UsageError(f"the CA offers no {cfg.challenge} challenge for {name} (it offers {offered})")
            keyauth = challb.chall.key_authorization(jwk)
            if cfg.challenge == "http-01":
                token = challb.chall.encode("token")
                store.http_tokens[token] = keyauth.encode("ascii")
                added.append(lambda t=token: store.http_tokens.pop(t, None))
            else:
                store.alpn_contexts[name] = validation_context(name, keyauth)
                added.append(lambda n=name: store.alpn_contexts.pop(n, None))
            acme.answer_challenge(challb, challb.chall.response(jwk))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=cfg.order_timeout)
        order = acme.poll_and_finalize(order, deadline)
    finally:
        for undo in added:
            undo()
    return order.fullchain_pem.encode("ascii"), key_pem


async def in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call in a daemon thread (unlike to_thread, a shutdown does not wait for it)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def work() -> None:
        try:
            result, ok = fn(*args), True
        except BaseException as exc:   # handed to the awaiting task as is
            result, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:           # the loop is gone (shutdown)
            pass

    threading.Thread(target=work, name="acme", daemon=True).start()
    return await fut


class AcmeManager:
    """Keeps a current ACME certificate in the store: cached one at start, orders when due (see module)."""

    def __init__(self, cfg: AcmeConfig, store: CertStore, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.store, self.clock = cfg, store, clock
        self.renewal = Renewal(cfg.renewal)
        self.task: asyncio.Task | None = None
        self.wake = asyncio.Event()

    def load_cached(self) -> bool:
        """Serve the cached certificate if there is a usable one (its directory differing makes it due)."""
        cfg = self.cfg
        crt, key, meta = cfg.path(".crt"), cfg.path(".key"), cfg.path(".json")
        try:
            with open(crt, "rb") as fh:
                pem = fh.read()
            with open(key, "rb") as fh:
                key_pem = fh.read()
            with open(meta, encoding="utf-8") as fh:
                directory = json.load(fh).get("directory")
            window = validity(pem_certificates(pem)[0])
            ctx = server_context(crt, key)
        except (OSError, ValueError, ParseError, AttributeError) as exc:
            if os.path.exists(crt):
                log.warning("ACME: ignoring the cached certificate %s: %s", crt, getattr(exc, "strerror", None) or exc)
            return False
        if window[1] <= self.clock():
            log.info("ACME: the cached certificate %s expired at %s", crt, utc_text(window[1]))
            return False
        self.store.install(ctx, pem, key_pem)
        self.renewal.on_certificate(*window)
        if directory != cfg.directory:
            log.info("ACME: the cached certificate came from %s, not %s: ordering a new one", directory,
                     cfg.directory)
            self.renewal.due_now(self.clock())            # still served until replaced
        log.info("ACME: serving the cached certificate for %s (valid until %s; renewal from %s)", cfg.hostname,
                 utc_text(window[1]), utc_text(self.renewal.renew_at()))
        return True

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    def renew_now(self) -> None:
        """SIGHUP: check the schedule at once (does not force an order that is not due)."""
        self.wake.set()

    async def run(self) -> None:
        while True:
            if self.renewal.due(self.clock()):
                await self.attempt()
            delay = self.renewal.next_deadline(self.clock()) - self.clock()
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), max(0.05, delay))
            except asyncio.TimeoutError:
                pass

    async def attempt(self) -> bool:
        cfg, store = self.cfg, self.store
        log.info("ACME: ordering a certificate for %s from %s (%s)", cfg.hostname, cfg.directory, cfg.challenge)
        try:
            chain, key = await in_daemon_thread(obtain, cfg, store)
            window = validity(pem_certificates(chain)[0])
            write_atomic(cfg.path(".key"), key, 0o600)
            write_atomic(cfg.path(".crt"), chain, 0o644)
            write_atomic(cfg.path(".json"), json.dumps({"directory": cfg.directory}).encode(), 0o644)
            ctx = server_context(cfg.path(".crt"), cfg.path(".key"))
        except Exception as exc:   # any failure of one order: keep serving, count, retry later
            store.counters["acme_failed"] += 1
            retry = self.renewal.on_failure(self.clock()) - self.clock()
            if store.has_certificate:
                log.error("ACME: renewal for %s failed, still serving the certificate valid until %s; "
                          "retrying in %.0f s: %s", cfg.hostname, utc_text(store.not_after), retry, describe(exc))
            else:
                log.error("ACME: cannot get a certificate for %s (TLS handshakes fail until one is issued); "
                          "retrying in %.0f s: %s", cfg.hostname, retry, describe(exc))
            return False
        store.install(ctx, chain, key)
        self.renewal.on_certificate(*window)
        store.counters["acme_ok"] += 1
        log.info("ACME: new certificate for %s, valid until %s (renewal from %s); new TLS handshakes get it",
                 cfg.hostname, utc_text(window[1]), utc_text(self.renewal.renew_at()))
        return True
