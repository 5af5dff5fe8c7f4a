"""The server's TLS context (ssl only, so a derper with its own certificates never loads `cryptography`).

`server_context` builds the context from a certificate and key file; `load_server_context` does the same
for files a user named and turns every problem (missing, unreadable, not PEM, mismatched, encrypted) into a
one-line `derp.errors.UsageError` naming the file.
"""
from __future__ import annotations

import ssl

from derp.errors import UsageError


def server_context(cert_path: str | None, key_path: str | None, password=None) -> ssl.SSLContext:
    """A server TLS context: TLS >= 1.2, ALPN http/1.1 only (the DERP upgrade needs HTTP/1.1). With no
    paths it holds no certificate yet (an ACME relay before its first certificate: handshakes fail)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_path is not None:
        ctx.load_cert_chain(cert_path, key_path, password)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.num_tickets = 0  # DERP clients hold one long connection; no session tickets to cache
    return ctx


def _check_pem(path: str, what: str, marker: bytes, hint: str) -> None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist{hint}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {(exc.strerror or str(exc)).lower()}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise UsageError(f"{what} {path} is not PEM (no '-----BEGIN ...{marker.decode()}-----' block)")


def _encrypted() -> bytes:
    raise UsageError("is encrypted with a passphrase (give an unencrypted key)")


def load_server_context(cert_path: str, key_path: str, hint: str = "") -> ssl.SSLContext:
    """`server_context` for user-given files; `hint` is appended to a 'does not exist' message."""
    _check_pem(cert_path, "certificate", b"CERTIFICATE", hint)
    _check_pem(key_path, "key", b"PRIVATE KEY", hint)
    try:
        return server_context(cert_path, key_path, _encrypted)
    except UsageError as exc:
        raise UsageError(f"key {key_path} {exc}") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise UsageError(f"key {key_path} does not belong to certificate {cert_path}") from None
        raise UsageError(f"cannot load certificate {cert_path} with key {key_path}: "
                         f"{exc.reason or exc.strerror or exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot load certificate {cert_path} with key {key_path}: "
                         f"{(exc.strerror or str(exc)).lower()}") from None
