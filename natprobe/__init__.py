"""natprobe: STUN, netcheck and the probes that tell what the network allows."""
