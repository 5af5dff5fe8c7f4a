"""wgclient.path: the pure cores that choose how each peer is reached (datagram demux, disco codec and keys,
home region, per-peer path manager). No I/O here: the runner in wgclient/aio feeds them and carries out
their outputs."""
