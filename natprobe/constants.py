"""Protocol constants for natprobe: STUN (RFC 8489/5389) and netcheck timings, each citing its source."""
from __future__ import annotations

# --- STUN, RFC 8489 §5 (header) and §14/§18 (attributes) ---------------------------------------------
HEADER_LEN = 20                    # RFC 8489 §5: type(2) length(2) cookie(4) transaction id(12)
MAGIC_COOKIE = 0x2112A442          # RFC 8489 §5
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
TXID_LEN = 12                      # RFC 8489 §5 (RFC 3489 clients use 16 bytes: cookie slot + 12)
MAX_MESSAGE = 65535 + HEADER_LEN   # the 16-bit length field bounds a message

# Message types (method Binding = 0x001, RFC 8489 §18.2; class bits §5).
BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

# Attributes (RFC 8489 §18.3, RFC 5389 §18.2).
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_XOR_MAPPED_ADDRESS_ALT = 0x8020   # pre-RFC code some servers still send (netcheck.md §2.3)
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E       # RFC 8489 §14.7: CRC-32 XOR "STUN"

FAMILY_IPV4 = 0x01                 # RFC 8489 §14.1
FAMILY_IPV6 = 0x02

# What Tailscale's derper requires in a request (netcheck.md §2.1, §2.4).
TAILSCALE_SOFTWARE = b"tailnode"

# --- STUN retransmission, RFC 8489 §6.2.1 -------------------------------------------------------------
DEFAULT_RTO = 0.5                  # initial RTO (s) when nothing is known of the path
DEFAULT_RC = 7                     # requests sent in total
DEFAULT_RM = 16                    # final wait = Rm x RTO after the last request

# --- netcheck, netcheck.md §3 ---------------------------------------------------------------------------
OVERALL_TIMEOUT = 5.0              # whole report
STUN_PHASE_TIMEOUT = 3.0           # STUN probing
FULL_REPORT_INTERVAL = 300.0       # a full report at least every 5 min
INITIAL_RETRANSMIT = 0.100         # spacing of probes within a full report's probe set
DEFAULT_RETRANSMIT = 0.200         # default spacing in incremental reports
ENOUGH_REGIONS = 3                 # "enough regions" (100 in verbose mode)
PROBES_PER_SET_FULL = 3            # delays 0, 100, 200 ms
HISTORY_WINDOW = 305.0             # reports kept for home selection: 5 min 5 s (§8)
HOME_SWITCH_MIN_GAIN = 0.010       # §8: switch only if >= 10 ms better ...
HOME_SWITCH_FACTOR = 2.0 / 3.0     # ... and more than one third faster
HOME_RECENT_DERP_FRAME = 8.0       # §8 step 3: old home still reachable if a DERP frame came this recently
HOME_KEEP_IF_HEARD_WITHIN = 120.0  # §8 step 5: 2 x DERP keepalive
INCREMENTAL_SPACING_FACTOR = 1.2   # §3.2: retry spacing = 1.2 x last latency of the region
INCREMENTAL_EXTRA_SPACING = 0.050  # §3.2: + i x 50 ms for tries i > 1
INCREMENTAL_REGIONS = 3            # §3.2: the fastest 3 regions (plus home)
DEFAULT_STUN_PORT = 3478           # derpmap.md §5
DEFAULT_DERP_PORT = 443
HTTPS_NODE_DIAL_TIMEOUT = 1.5      # §6: per node
HTTPS_BODY_LIMIT = 8192            # §6

# --- port mapping, netcheck.md §7 ------------------------------------------------------------------------
PORTMAP_WINDOW = 0.250             # send window for the three probes
PORTMAP_EXTRA_WAIT = 0.050         # wait after the first reply
NATPMP_PORT = 5351                 # RFC 6886 §3
PCP_PORT = 5351                    # RFC 6887 §19.1
SSDP_PORT = 1900
SSDP_MULTICAST = "239.255.255.250"
CAPTIVE_TIMEOUT = 3.0              # §7
