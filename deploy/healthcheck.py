#!/usr/bin/env python3
"""The container's HEALTHCHECK (installed as `wgc-healthcheck`): GET /healthz on the relay's own DERP port
over loopback and exit 0 when it answers 200 `ok`, else print one line and exit 1.

The URL is $WGC_HEALTHCHECK_URL (default https://127.0.0.1:443/healthz). This is a liveness check of the
process, so the certificate is not verified (loopback, and the name on it is the public one); check the chain
from outside with curl (docs/deploy.md).
"""
import os
import ssl
import sys
import urllib.request

URL = os.environ.get("WGC_HEALTHCHECK_URL", "https://127.0.0.1:443/healthz")


def main() -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(URL, timeout=4, context=ctx) as resp:
            body = resp.read(64)
            if resp.status == 200 and body.strip() == b"ok":
                return 0
            print(f"wgc-healthcheck: {URL} answered {resp.status} {body[:32]!r}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"wgc-healthcheck: {URL}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
