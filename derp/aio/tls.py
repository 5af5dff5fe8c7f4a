"""The server's TLS context (ssl only, so a derper with its own certificates never loads `cryptography`)."""
from __future__ import annotations

import ssl


def server_context(cert_path: str | None, key_path: str | None) -> ssl.SSLContext:
    """A server TLS context: TLS >= 1.2, ALPN http/1.1 only (the DERP upgrade needs HTTP/1.1). With no
    paths it holds no certificate yet (an ACME relay before its first certificate: handshakes fail)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_path is not None:
        ctx.load_cert_chain(cert_path, key_path)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.num_tickets = 0  # DERP clients hold one long connection; no session tickets to cache
    return ctx
