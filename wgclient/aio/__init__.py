"""asyncio adapters: TUN, UDP, UAPI server and the runner that drives the device core."""
