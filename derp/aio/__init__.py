"""asyncio adapters for DERP: client and server."""
