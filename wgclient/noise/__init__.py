"""Pure WireGuard (Noise_IKpsk2) primitives, messages and handshake state."""
