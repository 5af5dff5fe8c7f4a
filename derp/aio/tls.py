"""The server's TLS context (ssl only, so a derper with its own certificates never loads `cryptography`)."""
from __future__ import annotations

import ssl


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A server TLS context: TLS >= 1.2, ALPN http/1.1 only (the DERP upgrade needs HTTP/1.1)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.num_tickets = 0  # DERP clients hold one long connection; no session tickets to cache
    return ctx
