"""DERP: Tailscale-compatible relay protocol, client and server."""
