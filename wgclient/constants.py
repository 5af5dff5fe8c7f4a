"""WireGuard protocol constants, each with where it comes from.

Sources: the WireGuard whitepaper (§5.4 messages, §6 timers) and wireguard-go `device/constants.go`,
`device/noise-protocol.go`, `device/cookie.go` as summarised in shared/protocol/wireguard.md.
"""

# Noise protocol names (whitepaper §5.4).
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

KEY_LEN = 32

# Message types and sizes (whitepaper §5.4.2-5.4.6).
MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_COOKIE_REPLY = 3
MSG_TRANSPORT = 4
INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TAG_SIZE = 16
TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + TAG_SIZE  # 32: a keepalive
MAX_MESSAGE_SIZE = 65535
MAX_CONTENT_SIZE = MAX_MESSAGE_SIZE - TRANSPORT_MIN_SIZE
PADDING_MULTIPLE = 16

# Timers (whitepaper §6.1, wireguard-go constants.go).
REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.334  # wireguard-go RekeyTimeoutJitterMaxMs
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # responder flood limit: one initiation per 20 ms per peer
KEY_ZERO_AFTER = 3 * REJECT_AFTER_TIME  # 540 s: keys wiped after no new session

# Under-load detection and handshake rate limit (wireguard-go device.go, ratelimiter.go).
HANDSHAKE_QUEUE_SIZE = 1024
UNDER_LOAD_THRESHOLD = HANDSHAKE_QUEUE_SIZE // 8
UNDER_LOAD_AFTER = 1.0
HANDSHAKES_PER_SECOND = 20
HANDSHAKE_BURST = 5
# Ours (wireguard-go bounds the same work by its handshake queue and workers): handshake messages processed
# per received batch at most (a batch is up to 32 reads); and the least time between two "under load"
# log lines.
HANDSHAKE_BUDGET = 16
HANDSHAKE_BUDGET_UNDER_LOAD = 4
LOAD_LOG_INTERVAL = 60.0

# Anti-replay window (wireguard-go replay/replay.go): 128 blocks of 64 bits, one block kept free.
REPLAY_BLOCK_BITS = 64
REPLAY_RING_BLOCKS = 128
REPLAY_WINDOW = (REPLAY_RING_BLOCKS - 1) * REPLAY_BLOCK_BITS  # 8128

DEFAULT_MTU = 1420
MAX_PEERS = 1 << 16
MAX_STAGED_PACKETS = 128  # wireguard-go QueueStagedSize
