"""DERP protocol constants (derp.md §2-§6, from Tailscale's derp/derp.go and derpserver): one place for all."""
from __future__ import annotations

import enum

MAGIC = b"DERP\xf0\x9f\x94\x91"          # §2: "DERP" + UTF-8 of U+1F511
PROTOCOL_VERSION = 2                     # §2: v2 RecvPacket carries the source key
KEY_LEN = 32                             # §2
NONCE_LEN = 24                           # §2
FRAME_HEADER_LEN = 5                     # §2: type(1) || big-endian length(4)
MAX_PACKET_SIZE = 64 << 10               # §2: max packet bytes in Send/Forward/RecvPacket
MAX_INFO_LEN = 1 << 20                   # §2: max ServerInfo JSON
MAX_CLIENT_FRAME = 1 << 20               # §4.2: a client treats bigger frames as a broken connection
MAX_CLIENT_INFO_FRAME = 256 << 10        # §4.1 step 4
MAX_SERVER_FRAME = KEY_LEN * 2 + MAX_PACKET_SIZE  # §11: largest ForwardPacket payload (server side bound)
SERVER_KEY_READ_LIMIT = 1 << 10          # §4.1 step 2: a client reads at most 1 KiB of ServerKey
MIN_CLIENT_INFO_LEN = KEY_LEN + NONCE_LEN  # §4.1 step 4
MAX_SEND_PACKET_FRAME = KEY_LEN + MAX_PACKET_SIZE      # §5.1: 65,568 = destination key + 64 KiB

KEEPALIVE_INTERVAL = 60.0                # §2: server KeepAlive period ...
KEEPALIVE_JITTER = 5.0                   # ... plus random [0, 5 s)
CLIENT_READ_TIMEOUT = 120.0              # §2: no frame for this long => connection dead
CLIENT_KEEPALIVE_INTERVAL = 10.0         # ours, not Go's: an idle client Pings after this much silence ...
CLIENT_KEEPALIVE_MISSES = 3              # ... and gives the link up after this many silent intervals
RECONNECT_HEALTHY_AFTER = 10.0           # ours: a link must last this long before the backoff starts over
HANDSHAKE_TIMEOUT = 10.0                 # §4.1 step 4 / §7.2
PING_TIMEOUT = 5.0                       # §5.3: derphttp.Client.Ping waits <= 5 s
PING_MIN_LEN, PING_MAX_LEN = 8, 1000     # §5.3 server accepts 8..1000, echoes the first 8
SEND_QUEUE_DEPTH = 32                    # §5.2 per-client queue depth
MESH_RECONNECT_INTERVAL = 5.0            # §6: mesh watch connection redial period
NOT_HERE_RATE, NOT_HERE_BURST = 1.0, 3   # §5.1: PeerGone(NotHere) per sending connection
RECONNECT_MAX_DELAY = 5.0                # §10: min(n^2 * 10 ms, 5 s) * U[0.5, 1.5)
DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"      # §5.1: disco packets start with this ...
DISCO_MIN_LEN = 62                       # ... and are at least this long

# Our relay's own limits (not from derp.md): what one client may cost the relay.
FRAMES_PER_TURN = 64                     # frames handled per connection per event-loop turn ...
BYTES_PER_TURN = 256 << 10               # ... or payload bytes, whichever comes first (mesh peers: no limit)
FRAME_READ_TIMEOUT = 10.0                # a frame whose header arrived must be complete within this
MAX_CONNS_PER_IP = 100                   # concurrent DERP connections from one client address (0: no limit)

# DERP over QUIC (docs/derp-quic.md): a wgc extension, QUIC v1 (RFC 9000) with DATAGRAM frames (RFC 9221).
QUIC_ALPN = "wgc-derp/1"                 # the one ALPN both sides offer; any other is refused
QUIC_MAX_DATAGRAM_FRAME_SIZE = 65535     # RFC 9221 §3: the max_datagram_frame_size both sides advertise
QUIC_PACKET_SIZE = 1452                  # RFC 9000 §14: our UDP payload size (1500 - 40 IPv6 - 8 UDP)
QUIC_MIN_INITIAL = 1200                  # RFC 9000 §14.1: a client's Initial datagram is at least this
QUIC_CID_LEN = 8                         # our connection IDs (RFC 9000 §5.1 allows 0..20)
QUIC_SHORT_HEADER_FIXED = 1              # RFC 9000 §17.3.1: the first byte of a 1-RTT packet ...
QUIC_PN_MAX_LEN = 4                      # ... then the DCID, then a packet number of 1-4 bytes
QUIC_AEAD_TAG_LEN = 16                   # RFC 9001 §5.3: AEAD_AES_128_GCM / CHACHA20_POLY1305 tag
QUIC_DATAGRAM_FRAME_TYPE = 0x31          # RFC 9221 §4: DATAGRAM with a Length field
QUIC_IDLE_TIMEOUT = 120.0                # RFC 9000 §10.1 max_idle_timeout: the DERP read timeout
QUIC_DATAGRAM_QUEUE = 256                # ours: datagrams waiting for the window or the pacer: at least ...
QUIC_DATAGRAM_QUEUE_TIME = 0.02          # ... this long at the pacing rate (derp/quiccc.py queue_limit) ...
QUIC_DATAGRAM_QUEUE_MAX = 4096           # ... and at most this many, before drops
QUIC_MAX_HALF_OPEN = 1024                # ours: connections still in their handshake, per listener
QUIC_STREAM_HOLD_LIMIT = 4 << 20         # ours: DERP stream bytes held while a session's reading is paused
QUIC_RECV_BATCH = 256                    # ours: UDP datagrams read per readable callback

FAST_START_HEADER = "Derp-Fast-Start"    # §7.3
IDEAL_NODE_HEADER = "Ideal-Node"         # §7.2
CHALLENGE_HEADER = "X-Tailscale-Challenge"   # §7.5 /generate_204
RESPONSE_HEADER = "X-Tailscale-Response"


class FrameType(enum.IntEnum):
    """§3 frame types; note the gap between 0x0A and 0x10."""

    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


class PeerGoneReason(enum.IntEnum):
    """§5.5."""

    DISCONNECTED = 0x00
    NOT_HERE = 0x01
    MESH_CONN_BROKE = 0xF0


class PeerPresentFlags(enum.IntFlag):
    """§6."""

    NONE = 0
    REGULAR = 0x01
    MESH_PEER = 0x02
    PROBER = 0x04
    NOT_IDEAL = 0x08


def server_frame_limits() -> list[int]:
    """The largest payload the server accepts per frame type, indexed by type byte, checked at the header
    (§5): SendPacket key + 64 KiB, ForwardPacket two keys + 64 KiB, Ping/Pong 1000, NotePreferred 1,
    ClosePeer 32, WatchConns 0; unknown and ignored types may carry up to MAX_SERVER_FRAME."""
    limits = [MAX_SERVER_FRAME] * 256
    limits[FrameType.SEND_PACKET] = MAX_SEND_PACKET_FRAME
    limits[FrameType.FORWARD_PACKET] = MAX_SERVER_FRAME
    limits[FrameType.PING] = limits[FrameType.PONG] = PING_MAX_LEN
    limits[FrameType.NOTE_PREFERRED] = 1
    limits[FrameType.CLOSE_PEER] = KEY_LEN
    limits[FrameType.WATCH_CONNS] = 0
    return limits


def is_disco(packet: bytes | memoryview) -> bool:
    """§5.1: does this payload look like a disco message (magic prefix and minimum length)?"""
    return len(packet) >= DISCO_MIN_LEN and packet[:6] == DISCO_MAGIC
