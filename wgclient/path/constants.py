"""Path-selection constants: disco wire format and magicsock timings, each citing shared/protocol/disco.md
(derived from Tailscale's disco/disco.go and wgengine/magicsock) or derp.md / netcheck.md."""
from __future__ import annotations

# Disco packet layout (disco.md §2).
MAGIC = b"TS\xf0\x9f\x92\xac"        # "TS" + UTF-8 of U+1F4AC
MAGIC_LEN = 6
KEY_LEN = 32                          # sender's disco public key
NONCE_LEN = 24
TAG_LEN = 16                          # Poly1305
HEADER_LEN = MAGIC_LEN + KEY_LEN + NONCE_LEN          # 62: "looks like disco" threshold
MIN_PACKET_LEN = HEADER_LEN + TAG_LEN + 2             # a box holding at least type + version
MAX_PACKET_LEN = 65535

# Message types (disco.md §3). 0x04-0x09 are peer-relay messages: parsed as unknown and ignored here.
TYPE_PING = 0x01
TYPE_PONG = 0x02
TYPE_CALL_ME_MAYBE = 0x03
# wgc extension (not a Tailscale type; Tailscale ignores unknown types in a valid box, disco.md §2):
# what a control server would otherwise tell peers (home region, NAT facts). See docs/path.md.
TYPE_WGC_NODE_INFO = 0xF0
VERSION = 0

TXID_LEN = 12
ADDR_PORT_LEN = 18                    # 16-byte IP (v4 mapped) + 2-byte port
PING_MIN_BODY = TXID_LEN              # very old clients omit the node key
PING_KEY_BODY = TXID_LEN + KEY_LEN    # 44
PONG_BODY = TXID_LEN + ADDR_PORT_LEN  # 30

# wgc bound: a CallMeMaybe's endpoints beyond this many are ignored (Tailscale sends a handful).
MAX_CALL_ME_MAYBE_ENDPOINTS = 32

# DERP "magic IP": disco over DERP is handled as coming from 127.3.3.40:<region> (disco.md §4.2).
DERP_MAGIC_IP = "127.3.3.40"

# magicsock timings (disco.md §6).
HEARTBEAT_INTERVAL = 3.0              # heartbeatInterval
TRUST_UDP_ADDR_DURATION = 6.5         # trustUDPAddrDuration
SESSION_ACTIVE_TIMEOUT = 45.0         # sessionActiveTimeout (also ping-learned endpoint expiry)
DISCO_PING_INTERVAL = 5.0             # discoPingInterval
PING_TIMEOUT = 5.0                    # pingTimeoutDuration
GOOD_ENOUGH_LATENCY = 0.005           # goodEnoughLatency
UPGRADE_UDP_DIRECT_INTERVAL = 60.0    # upgradeUDPDirectInterval
MAX_PONG_HISTORY = 64                 # pongHistoryCount

# wgc (issue 9): after a discovery round that follows new information (first traffic, the peer's new
# CallMeMaybe, new endpoints of ours, the peer appearing on DERP, trust lapsing) got no pong, it is
# repeated after these delays, then the steady ~5 s rounds go on. A first ping often meets the peer's NAT
# before the peer has punched it; waiting for the next round made first contact take 3-5 s.
PUNCH_BACKOFF = (0.25, 0.5, 1.0, 2.0)

# DERP client behaviour (derp.md §10): idle non-home regions close after 60 s without writes.
REGION_IDLE_TIMEOUT = 60.0
# Issue 5: a dead home region is replaced by the next one within 5 s.
HOME_FAILOVER_DELAY = 2.0
# netcheck.md §8: a region a DERP frame came from within this long counts as reachable.
RECENT_DERP_FRAME = 8.0
