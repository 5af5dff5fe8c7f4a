"""wgc: userspace WireGuard with DERP relay fallback and NAT traversal."""
