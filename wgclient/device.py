"""The WireGuard device core: peers, indices, cryptokey routing, handshakes, timers (sans-I/O).

Inputs are method calls with the time passed in (`now`, monotonic seconds; wall-clock time is
`now + wall_offset`, set by the adapter): `send_packets` (IP packets read from the TUN),
`receive_datagrams` (UDP payloads with their source endpoints), `on_timer`. Each returns the device's
`Outputs` (see outputs.py). The adapter re-arms one timer at `next_deadline()`.

Protocol rules (shared/protocol/wireguard.md §3-§9) and where they live here:
- handshake initiation is rate limited to one per REKEY_TIMEOUT per peer (`_send_initiation`);
- the responder confirms keys on the first transport packet under them (`_after_receive`);
- handshake messages wait until the batch's transport messages are done, and the gate bounds how many
  are processed (handshake_gate.py: a budget per batch; under load one per source);
- mac1 is always checked, before any DH; under load mac2 too, with cookie replies and a per-IP rate
  limit (`_receive_handshake`);
- a peer's endpoint follows the source of its latest authenticated packet (roaming);
- inbound packets are dropped unless their inner source maps to the sending peer, or to a peer routed
  through the sender as a relay node (`route_through`; datapath.py);
- with the relay role (`enable_relay`) packets from one peer to another are forwarded inside the device
  (relaynode.py).
Garbage never raises out of an input: it is dropped and counted in `drops` by reason.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Callable, Iterable

from . import datapath
from .allowedips import AllowedIPs
from .constants import (DEFAULT_MTU, HANDSHAKE_BUDGET, HANDSHAKE_BUDGET_UNDER_LOAD, HANDSHAKE_INITIATION_RATE,
                        KEEPALIVE_TIMEOUT, KEY_ZERO_AFTER, LOAD_LOG_INTERVAL, MAX_PEERS, MAX_TIMER_HANDSHAKES,
                        MSG_COOKIE_REPLY, MSG_INITIATION, MSG_TRANSPORT, REKEY_TIMEOUT,
                        REKEY_TIMEOUT_JITTER_MAX, UNDER_LOAD_THRESHOLD)
from .errors import ParseError, UsageError
from .handshake_gate import COOKIE_SENT, RATE_LIMITED, HandshakeGate, source_identity
from .keypair import Keypair
from .noise import handshake as noise
from .noise.cookie import CookieChecker
from .noise.messages import message_type, parse_cookie_reply, parse_initiation, parse_response
from .outputs import HandshakeCompleted, Outputs
from .peer import Endpoint, Peer, short_key
from .relaynode import Forwarder
from .timers import Timer

log = logging.getLogger("wgc.device")


@dataclass(frozen=True)
class DeviceConfig:
    mtu: int = DEFAULT_MTU
    # Handshake messages within one second that put the device "under load" (wireguard-go: a handshake
    # queue 1/8 full); so does a batch with more than handshake_budget of them (handshake_gate.py).
    under_load_threshold: int = UNDER_LOAD_THRESHOLD
    handshake_budget: int = HANDSHAKE_BUDGET  # handshake messages processed per batch, at most
    handshake_budget_under_load: int = HANDSHAKE_BUDGET_UNDER_LOAD  # the same while under load
    load_log_interval: float = LOAD_LOG_INTERVAL  # at most one "under load" log line per this many seconds
    tun_headroom: int = 0  # free bytes kept before each decrypted packet (virtio-net header room)
    flood_interval: float = HANDSHAKE_INITIATION_RATE


class Device:
    def __init__(self, private_key: bytes | None, *, random_bytes: Callable[[int], bytes],
                 config: DeviceConfig = DeviceConfig(), wall_offset: float = 0.0,
                 jitter: Callable[[], float] | None = None) -> None:
        self.config = config
        self.random_bytes = random_bytes
        # Timer jitter needs no secrecy: an adapter may pass a cheap PRNG (it runs once per batch).
        self._jitter = jitter or self._jitter_from_random_bytes
        self.wall_offset = wall_offset
        self.identity: noise.Identity | None = None
        self.cookie_checker: CookieChecker | None = None
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.handshake_indices: dict[int, Peer] = {}
        self.keypair_indices: dict[int, Keypair] = {}
        self.drops: collections.Counter[str] = collections.Counter()
        # When set, datagrams that are not WireGuard go to Outputs.foreign (for the disco/STUN demux).
        self.collect_foreign = False
        self.forwarder: Forwarder | None = None  # set by enable_relay(): `[Interface] Relay = true`
        self._armed: set[Peer] = set()  # peers that armed a timer since the last deadline query
        self.out = Outputs()
        self.gate = HandshakeGate(self.drops, budget=config.handshake_budget,
                                  budget_under_load=config.handshake_budget_under_load,
                                  threshold=config.under_load_threshold, log_interval=config.load_log_interval)
        if private_key is not None:
            self.set_private_key(private_key)

    # -- configuration ---------------------------------------------------------------------------------
    @property
    def public_key(self) -> bytes | None:
        return self.identity.public_key if self.identity else None

    def set_private_key(self, private_key: bytes | None) -> None:
        """Set or remove the device key; peers with our own public key go, sessions are expired."""
        if private_key is None or private_key == bytes(32):
            self.identity = None
            self.cookie_checker = None
        else:
            self.identity = noise.Identity(private_key)
            self.cookie_checker = CookieChecker(self.identity.public_key, self.random_bytes)
            if self.identity.public_key in self.peers:
                self.remove_peer(self.identity.public_key)
        for peer in self.peers.values():
            if self.identity:
                peer.handshake.precompute(self.identity)
            self._expire_sessions(peer)

    def add_peer(self, public_key: bytes) -> Peer:
        if len(public_key) != 32:
            raise UsageError("a public key is 32 bytes")
        if public_key in self.peers:
            return self.peers[public_key]
        if len(self.peers) >= MAX_PEERS:
            raise UsageError("too many peers")
        peer = Peer(public_key, self._jitter, self._armed.add)
        if self.identity:
            peer.handshake.precompute(self.identity)
        self.peers[public_key] = peer
        peer.log.debug("peer added")
        return peer

    def enable_relay(self, on: bool = True) -> None:
        """The relay role: forward packets between peers inside the device (relaynode.py)."""
        if on and self.forwarder is None:
            self.forwarder = Forwarder()
        elif not on:
            self.forwarder = None

    def route_through(self, peer: Peer, relay: Peer | None) -> None:
        """Send peer's packets through the relay node `relay` (None: to the peer itself again); while
        set, packets from `relay` may carry peer's inner sources."""
        if relay is peer or (relay is not None and self.peers.get(relay.public_key) is not relay):
            raise UsageError("a peer is routed through another configured peer")
        peer.send_to = relay or peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        for other in self.peers.values():
            if other.send_to is peer:
                other.send_to = other
        peer.send_to = peer
        if self.forwarder is not None:
            self.forwarder.forget_peer(public_key)
        self.allowed_ips.remove_peer(peer)
        self._expire_sessions(peer)
        peer.timers.stop()
        peer.staged.clear()
        peer.log.debug("peer removed")

    def set_preshared_key(self, peer: Peer, psk: bytes | None) -> None:
        peer.handshake.preshared_key = psk if psk else bytes(32)

    def set_endpoint(self, peer: Peer, endpoint: Endpoint | None) -> None:
        peer.endpoint = endpoint

    def set_persistent_keepalive(self, peer: Peer, seconds: int, now: float) -> Outputs:
        """Set the interval; turning it on sends a keepalive at once (as wireguard-go does)."""
        was = peer.timers.persistent_keepalive_interval
        peer.timers.persistent_keepalive_interval = seconds
        if seconds == 0:
            peer.timers.persistent_keepalive = None
        elif was == 0 and self.identity is not None:
            self._send_keepalive(peer, now)
        return self.out

    def _expire_sessions(self, peer: Peer) -> None:
        for kp in peer.keypairs.clear():
            self.keypair_indices.pop(kp.local_index, None)
        if peer.handshake.local_index:
            self.handshake_indices.pop(peer.handshake.local_index, None)
        peer.handshake.clear()

    # -- inputs ------------------------------------------------------------------------------------------
    def send_packets(self, packets: Iterable, now: float) -> Outputs:
        """IP packets read from the TUN: route by destination, seal or stage them."""
        datapath.seal_packets(self, packets, now)
        return self.out

    def receive_datagrams(self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float) -> Outputs:
        """UDP payloads with their sources: open transport messages, handle handshakes."""
        datapath.open_datagrams(self, datagrams, now)
        return self.out

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> Outputs:
        return self.receive_datagrams(((data, source),), now)

    def initiate(self, peer: Peer, now: float) -> Outputs:
        self._send_initiation(peer, now, retry=False)
        return self.out

    def resend_handshake(self, peer: Peer, now: float) -> Outputs:
        """The path to a managed peer changed while our initiation was unanswered (it may have gone
        where the peer is not, e.g. a DERP region it had not joined yet): send it again now instead of
        after REKEY_TIMEOUT, keeping the retry count and the retransmit timer.

        The same initiation goes again, not a new one. If the first one did arrive too, the responder
        takes one of the two and drops the other as a replay (same timestamp), and its one response
        matches our state. A fresh initiation would replace our state, so the response to the first
        would be dropped here, and a responder (wireguard-go, the kernel, us) also drops an initiation
        that comes within 20 ms of the one it took (the flood limit). Then neither completes, and the
        handshake waits for REKEY_TIMEOUT."""
        pending = peer.pending_initiation
        if peer.keypairs.current is not None or pending is None or peer.last_sent_handshake is None:
            return self.out           # nothing of ours awaits an answer
        if now - peer.last_sent_handshake < REKEY_TIMEOUT:
            buf = bytearray(pending)
            peer.cookie.add_macs(buf, now)    # mac2 too if a cookie came meanwhile; mac1 is the same
            peer.log.debug("sending handshake initiation again (the path changed)")
            self._send_control(peer, bytes(buf))
        else:
            peer.last_sent_handshake = None
            self._send_initiation(peer, now, retry=True)
        return self.out

    def next_deadline(self) -> float | None:
        """The earliest timer of any peer (scans them all), or the end of being under load."""
        self._armed.clear()
        self.gate.armed = False
        best = self.gate.deadline()
        for peer in self.peers.values():
            t = peer.timers.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def armed_deadline(self) -> float | None:
        """The earliest timer among peers that armed one since the last query: after an input, the
        only way the device's next deadline can have moved earlier. O(peers touched), not O(peers)."""
        best = None
        if self.gate.armed:  # the device went under load: its end is a deadline
            self.gate.armed = False
            best = self.gate.deadline()
        for peer in self._armed:
            t = peer.timers.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        self._armed.clear()
        return best

    def on_timer(self, now: float) -> Outputs:
        self.gate.on_timer(now)
        for peer in list(self.peers.values()):
            for timer in peer.timers.expired(now):
                self._timer_expired(peer, timer, now)
        return self.out

    # -- timers ------------------------------------------------------------------------------------------
    def _jitter_from_random_bytes(self) -> float:
        return int.from_bytes(self.random_bytes(2), "little") % int(REKEY_TIMEOUT_JITTER_MAX * 1000) / 1000.0

    def _timer_expired(self, peer: Peer, timer: Timer, now: float) -> None:
        t = peer.timers
        if timer is Timer.RETRANSMIT_HANDSHAKE:
            if t.handshake_attempts > MAX_TIMER_HANDSHAKES:
                peer.log.info("handshake did not complete after %d attempts, giving up",
                              MAX_TIMER_HANDSHAKES + 2)
                t.send_keepalive = None
                peer.staged.clear()
                if t.zero_key_material is None:
                    t.zero_key_material = now + KEY_ZERO_AFTER
            else:
                t.handshake_attempts += 1
                peer.log.debug("handshake did not complete after %.0f seconds, retrying (try %d)",
                               REKEY_TIMEOUT, t.handshake_attempts + 1)
                self._send_initiation(peer, now, retry=True)
        elif timer is Timer.SEND_KEEPALIVE:
            self._send_keepalive(peer, now)
            if t.need_another_keepalive:
                t.need_another_keepalive = False
                t.send_keepalive = now + KEEPALIVE_TIMEOUT
        elif timer is Timer.NEW_HANDSHAKE:
            peer.log.debug("no reply after sending data for %.0f seconds, new handshake",
                           KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)
            self._send_initiation(peer, now, retry=False)
        elif timer is Timer.ZERO_KEY_MATERIAL:
            peer.log.debug("zeroing keys after %.0f seconds without a new session", KEY_ZERO_AFTER)
            self._expire_sessions(peer)
            peer.staged.clear()
        elif timer is Timer.PERSISTENT_KEEPALIVE and t.persistent_keepalive_interval > 0 \
                and t.persistent_keepalive is None:  # not re-armed by a packet sent earlier in this round
            self._send_keepalive(peer, now)

    # -- sending -----------------------------------------------------------------------------------------
    def _new_index(self, owner) -> int:
        while True:
            index = int.from_bytes(self.random_bytes(4), "little")
            if index and index not in self.handshake_indices and index not in self.keypair_indices:
                self.handshake_indices[index] = owner
                return index

    def _send_control(self, peer: Peer, message: bytes) -> None:
        if peer.endpoint is None:
            self.drops["no endpoint"] += 1
            return
        peer.tx_bytes += len(message)
        self.out.datagrams.append((peer.endpoint, message))

    def _send_initiation(self, peer: Peer, now: float, *, retry: bool) -> None:
        if self.identity is None:
            return
        if not retry:
            peer.timers.handshake_attempts = 0
        if peer.last_sent_handshake is not None and now - peer.last_sent_handshake < REKEY_TIMEOUT:
            return
        peer.last_sent_handshake = now
        if peer.handshake.local_index:
            self.handshake_indices.pop(peer.handshake.local_index, None)
        try:
            msg = noise.create_initiation(self.identity, peer.handshake, wall_time=now + self.wall_offset,
                                          local_index=self._new_index(peer), random_bytes=self.random_bytes)
        except ParseError:
            self.drops["bad peer key"] += 1
            return
        buf = bytearray(msg.encode())
        peer.cookie.add_macs(buf, now)
        peer.pending_initiation = bytes(buf)
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_sent()
        peer.log.debug("sending handshake initiation")
        self._send_control(peer, bytes(buf))
        peer.timers.on_handshake_initiated(now)

    def _send_response(self, peer: Peer, now: float) -> None:
        peer.last_sent_handshake = now
        peer.pending_initiation = None      # our state is the responder's now
        old_index = peer.handshake.local_index
        if old_index:
            self.handshake_indices.pop(old_index, None)
        index = self._new_index(peer)
        msg = noise.create_response(self.identity, peer.handshake, local_index=index,
                                    random_bytes=self.random_bytes)
        buf = bytearray(msg.encode())
        peer.cookie.add_macs(buf, now)
        self._begin_session(peer, now, initiator=False)
        peer.timers.on_session_derived(now)
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_sent()
        peer.log.debug("sending handshake response")
        self._send_control(peer, bytes(buf))

    def _begin_session(self, peer: Peer, now: float, *, initiator: bool) -> None:
        peer.pending_initiation = None
        hs = peer.handshake
        send_key, recv_key = noise.derive_keys(hs, initiator=initiator)
        index = hs.local_index
        self.handshake_indices.pop(index, None)
        kp = Keypair(send_key, recv_key, local_index=index, remote_index=hs.remote_index, created=now,
                     is_initiator=initiator, peer=peer)
        hs.local_index = 0
        self.keypair_indices[index] = kp
        for old in peer.keypairs.install(kp):
            self.keypair_indices.pop(old.local_index, None)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)

    def _send_staged(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            return
        kp = peer.sending_keypair(now)
        if kp is None:
            self._send_initiation(peer, now, retry=False)
            return
        data = False
        while peer.staged:
            packet = peer.staged.popleft()
            if not datapath.seal_one(self, peer, kp, packet):
                # The keypair reached REJECT_AFTER_MESSAGES and seal_one re-staged the packet at the back:
                # put it first again; the rest wait for new keys (after_send starts the handshake).
                peer.staged.rotate(1)
                break
            data = data or bool(packet)
        datapath.after_send(self, peer, now, data)

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        peer.timers.on_handshake_complete()
        peer.last_handshake_wall = now + self.wall_offset
        peer.log.info("handshake complete")
        self.out.events.append(HandshakeCompleted(peer))

    # -- receiving handshake messages -------------------------------------------------------------------
    def note_source(self, peer: Peer, source: Endpoint) -> None:
        """Roaming: the peer is now where its latest authenticated packet came from (or, for a managed
        peer, the source is reported to the path manager through Outputs.heard)."""
        if peer.managed:
            self.out.heard.append((peer, source))
        elif len(source) != 3:   # a relayed source (DERP: pseudo-host, region, sender key) is no address
            peer.endpoint = source

    def receive_control(self, pending: list, now: float) -> None:
        """The datagrams of a batch that are not transport messages, after its transport messages (so
        data goes first): foreign ones to Outputs.foreign, handshake messages through the gate, which
        bounds how many are processed (handshake_gate.py). The cheap checks (type and exact size here,
        mac1 in _receive_handshake) come before any DH."""
        handshakes = []
        for data, source in pending:
            kind = message_type(data)
            if kind == 0 or kind == MSG_TRANSPORT:  # a transport message here is one with a bad header
                if self.collect_foreign and kind == 0:
                    self.out.foreign.append((bytes(data), source))
                else:
                    self.drops["not wireguard"] += 1
            else:
                handshakes.append((data, kind, source))
        if not handshakes:
            return
        if self.identity is None:
            self.drops["no private key"] += len(handshakes)
            return
        for data, kind, source in self.gate.admit(handshakes, now):
            try:
                self._receive_handshake(bytes(data), kind, source, now)
            except ParseError as exc:
                self.drops[f"handshake: {exc}"] += 1

    def _receive_handshake(self, data: bytes, kind: int, source: Endpoint, now: float) -> None:
        if kind == MSG_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
            return
        if not self.cookie_checker.check_mac1(data):
            self.drops["bad mac1"] += 1
            return
        gate = self.gate
        if gate.under_load(now):
            src = gate.cookie_source(source)
            if not self.cookie_checker.check_mac2(data, src, now):
                sender = int.from_bytes(data[4:8], "little")
                reply = self.cookie_checker.create_reply(data, sender, src, now)
                self.out.datagrams.append((source, reply.encode()))
                self.drops[COOKIE_SENT] += 1
                return
            if gate.rate_limited(source_identity(source), now):
                self.drops[RATE_LIMITED] += 1
                return
        if kind == MSG_INITIATION:
            self._receive_initiation(data, source, now)
        else:
            self._receive_response(data, source, now)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        reply = parse_cookie_reply(data)
        owner = self.handshake_indices.get(reply.receiver)
        if owner is None:
            kp = self.keypair_indices.get(reply.receiver)
            owner = kp.peer if kp else None
        if owner is None or not owner.cookie.consume_reply(reply, now):
            self.drops["bad cookie reply"] += 1

    def _receive_initiation(self, data: bytes, source: Endpoint, now: float) -> None:
        msg = parse_initiation(data)
        decoded = noise.open_initiation(self.identity, msg)
        peer = self.peers.get(decoded.remote_static)
        if peer is None:
            self.drops["initiation from unknown peer"] += 1
            return
        noise.consume_initiation(decoded, peer.handshake, msg, now=now, flood_interval=self.config.flood_interval)
        self.note_source(peer, source)
        peer.rx_bytes += len(data)
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_received()
        peer.log.debug("received handshake initiation")
        self._send_response(peer, now)

    def _receive_response(self, data: bytes, source: Endpoint, now: float) -> None:
        msg = parse_response(data)
        peer = self.handshake_indices.get(msg.receiver)
        if peer is None:
            self.drops["response to unknown index"] += 1
            return
        noise.consume_response(self.identity, peer.handshake, msg)
        self.note_source(peer, source)
        peer.rx_bytes += len(data)
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_received()
        self._begin_session(peer, now, initiator=True)
        peer.timers.on_session_derived(now)
        self._handshake_complete(peer, now)
        self._send_keepalive(peer, now)


__all__ = ["Device", "DeviceConfig", "Peer", "short_key"]
