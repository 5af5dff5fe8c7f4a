"""asyncio adapters for natprobe: STUN client and server."""
