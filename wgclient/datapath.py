"""The transport-data hot path of the device core: seal packets from the TUN, open datagrams from UDP.

Written for throughput: one call handles a whole batch; messages are sealed and opened in place in the
`Outputs` buffers with `encrypt_into`/`decrypt_into` (no per-packet bytes objects); timer hooks and
roaming run once per peer per batch, not once per packet. The other datagrams of a batch (handshake
messages, anything foreign) are set aside and handed to the device after the transport messages, so a
flood of handshakes never delays the data that came with it (handshake_gate.py bounds their work). The
rules are those of shared/protocol/wireguard.md §7; the handshake side lives in device.py.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Iterable

from cryptography.exceptions import InvalidTag

from . import relaynode

from .constants import (MSG_TRANSPORT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REPLAY_RING_BLOCKS,
                        TRANSPORT_MIN_SIZE)

if TYPE_CHECKING:  # pragma: no cover
    from .device import Device
    from .keypair import Keypair
    from .peer import Peer

_header = struct.Struct("<IIQ")
_pack_header = _header.pack_into
_unpack_header = _header.unpack_from
_nonce = struct.Struct("<4xQ").pack
_PADDING = [bytes(n) for n in range(16)]
_from = int.from_bytes
_u32 = struct.Struct("!I").unpack_from
_ip4 = struct.Struct("!2xH8xI").unpack_from  # IPv4 total length and source address
_RING_MASK = REPLAY_RING_BLOCKS - 1


def _grow(buf: bytearray, need: int) -> None:
    if need > len(buf):
        buf.extend(bytes(max(need - len(buf), len(buf))))


def sealed_size(n: int, mtu: int) -> int:
    """Size of the transport message for an n-byte plaintext: padded to 16, but not past the MTU."""
    padded = (n + 15) & ~15
    if padded > mtu:
        padded = mtu if n <= mtu else n
    return 32 + padded


def _seal_at(mv: memoryview, start: int, end: int, kp: "Keypair", counter: int, packet, n: int) -> None:
    """Write the transport message for packet with counter into mv[start:end] (wireguard.md §7)."""
    _pack_header(mv, start, MSG_TRANSPORT, kp.remote_index, counter)
    body = start + 16
    mv[body:body + n] = packet
    tail = end - 16
    if tail > body + n:
        mv[body + n:tail] = _PADDING[tail - body - n]
    kp.send.encrypt_into(_nonce(counter), mv[body:tail], None, mv[body:end])


def seal_one(dev: "Device", peer: "Peer", kp: "Keypair", packet) -> bool:
    """Seal one plaintext (b"" for a keepalive) for peer into the send buffer. False if it was staged."""
    counter = kp.send_counter
    if counter >= REJECT_AFTER_MESSAGES:
        peer.stage(bytes(packet))
        return False
    if peer.endpoint is None:
        dev.drops["no endpoint"] += 1
        return True
    kp.send_counter = counter + 1
    out = dev.out
    n = len(packet)
    start = out.sealed[-1][2] if out.sealed else 0
    end = start + sealed_size(n, dev.config.mtu)
    buf = out.send_buf
    if end > len(buf):
        _grow(buf, end)
    with memoryview(buf) as mv:
        _seal_at(mv, start, end, kp, counter, packet, n)
    out.sealed.append((peer.endpoint, start, end))
    peer.tx_bytes += end - start
    return True


def after_send(dev: "Device", peer: "Peer", now: float, data: bool) -> None:
    """Timer hooks after a batch of transport messages went to peer (wireguard-go send.go)."""
    t = peer.timers
    t.on_any_authenticated_packet_traversal(now)
    t.on_any_authenticated_packet_sent()
    if data:
        t.on_data_sent(now)
    if peer.should_rekey_after_send(now):
        dev._send_initiation(peer, now, retry=False)


def seal_packets(dev: "Device", packets: Iterable, now: float) -> None:
    cache4 = dev.allowed_ips.v4.cache
    cache6 = dev.allowed_ips.v6.cache
    lookup4 = dev.allowed_ips.v4.lookup_cached
    lookup6 = dev.allowed_ips.v6.lookup_cached
    drops = dev.drops
    touched: dict = {}  # peer -> its sending keypair, or False when its packets are staged
    out = dev.out
    via: set = set()  # peers whose packets went to the relay node they are routed through
    via_add = via.add
    sealed_append = out.sealed.append
    buf = out.send_buf
    mtu = dev.config.mtu
    start = out.sealed[-1][2] if out.sealed else 0
    mv = memoryview(buf)
    size_buf = len(buf)
    addr4 = -1
    peer4 = None
    # The peer of the current run of packets and, while sealing for it, its keypair's state in locals
    # (written back by _flush_run when the run ends).
    current = kp = None
    counter = tx = remote = 0
    endpoint = encrypt = None
    try:
        for packet in packets:
            n = len(packet)
            if n < 20:
                drops["tun: short packet"] += 1
                continue
            version = packet[0] >> 4
            if version == 4:
                addr = _u32(packet, 16)[0]
                if addr != addr4:
                    peer4 = cache4.get(addr) or lookup4(addr)
                    addr4 = addr
                    if peer4 is not None and peer4.send_to is not peer4:  # routed through a relay node
                        via_add(peer4)
                        peer4 = peer4.send_to
                peer = peer4
            elif version == 6 and n >= 40:
                addr = _from(packet[24:40], "big")
                peer = cache6.get(addr) or lookup6(addr)
                if peer is not None and peer.send_to is not peer:
                    via_add(peer)
                    peer = peer.send_to
            else:
                drops["tun: not IPv4/IPv6"] += 1
                continue
            if peer is None:
                drops["tun: no peer for destination"] += 1
                continue
            if peer is not current:
                if kp:
                    kp.send_counter = counter
                    current.tx_bytes += tx
                current = peer
                kp = touched.get(peer)
                if kp is None:
                    kp = peer.sending_keypair(now)
                    if kp is None or peer.staged:
                        kp = False
                    touched[peer] = kp
                if kp:
                    counter = kp.send_counter
                    encrypt = kp.send.encrypt_into
                    remote = kp.remote_index
                    endpoint = peer.endpoint
                    tx = 0
            if kp is False or counter >= REJECT_AFTER_MESSAGES or endpoint is None:
                peer.stage(bytes(packet))
                continue
            # The transport message (wireguard.md §7): header, plaintext padded to 16 (not past the MTU),
            # sealed in place.
            padded = (n + 15) & ~15
            if padded > mtu:
                padded = mtu if n <= mtu else n
            end = start + 32 + padded
            if end > size_buf:
                mv.release()
                _grow(buf, end)
                size_buf = len(buf)
                mv = memoryview(buf)
            _pack_header(mv, start, MSG_TRANSPORT, remote, counter)
            body = start + 16
            tail = body + n
            mv[body:tail] = packet
            if padded > n:
                tail = body + padded
                mv[body + n:tail] = _PADDING[padded - n]
            encrypt(_nonce(counter), mv[body:tail], None, mv[body:end])
            counter += 1
            sealed_append((endpoint, start, end))
            tx += end - start
            start = end
    finally:
        mv.release()
        if kp:
            kp.send_counter = counter
            current.tx_bytes += tx
    if via:
        out.via.extend(via)
    for peer, kp in touched.items():
        if kp is False or peer.staged:
            dev._send_staged(peer, now)
        else:
            after_send(dev, peer, now, True)


def open_datagrams(dev: "Device", datagrams: Iterable, now: float) -> None:
    out = dev.out
    buf = out.recv_buf
    headroom = dev.config.tun_headroom
    keypairs = dev.keypair_indices
    cache4 = dev.allowed_ips.v4.cache
    cache6 = dev.allowed_ips.v6.cache
    lookup4 = dev.allowed_ips.v4.lookup_cached
    lookup6 = dev.allowed_ips.v6.lookup_cached
    drops = dev.drops
    tun_append = out.tun.append
    # A relay node (relaynode.py) seals packets for its other peers instead of writing them to the TUN.
    forwarding = dev.forwarder is not None
    destination_peer = relaynode.destination_peer
    forwarded: list = []
    forward_append = forwarded.append
    pending: list = []  # the datagrams that are not transport messages, for dev.receive_control
    pending_append = pending.append
    # Per keypair: [source of its last packet, data received?, that packet's position in the batch].
    # Runs of packets under one keypair (the usual case) keep their state in locals, folded in by _settle.
    touched: dict = {}
    kp = None
    receiver_cached = -1  # the receiver index kp belongs to
    source_at = position_at = None
    data_seen = False
    rx = rx_data = 0
    replay = ring = None
    last = block = 0
    addr4 = -1
    owner4 = None
    start = out.tun[-1][1] if out.tun else 0
    mv = memoryview(buf)
    size_buf = len(buf)
    position = -1
    try:
        for data, source in datagrams:
            position += 1
            size = len(data)
            if size < TRANSPORT_MIN_SIZE or data[0] != MSG_TRANSPORT:
                pending_append((data, source))  # handshake or foreign: after the transport messages
                continue
            kind, receiver, counter = _unpack_header(data)
            if kind != MSG_TRANSPORT:
                pending_append((data, source))
                continue
            if receiver != receiver_cached:
                new = keypairs.get(receiver)
                if new is None:
                    drops["transport: unknown receiver index"] += 1
                    continue
                if now - new.created >= REJECT_AFTER_TIME:
                    drops["transport: keypair expired"] += 1
                    continue
                if new is not kp:
                    if kp is not None:
                        replay.last = last
                        _settle(touched, kp, source_at, data_seen, position_at, rx, rx_data)
                    kp = new
                    decrypt = kp.recv.decrypt_into
                    replay = kp.replay
                    owner = kp.peer
                    source_at = None
                    data_seen = False
                    rx = rx_data = 0
                else:
                    replay.last = last
                ring = replay.ring
                last = replay.last
                block = last >> 6
                receiver_cached = receiver
            plen = size - 32
            pkt = start + headroom
            end = pkt + plen
            if end > size_buf:
                mv.release()
                _grow(buf, end)
                size_buf = len(buf)
                mv = memoryview(buf)
            try:
                decrypt(_nonce(counter), data[16:], None, mv[pkt:end])
            except InvalidTag:
                drops["transport: authentication failed"] += 1
                continue
            # The replay window (replay.py), with its common case inline: the next counter in the block
            # of the highest one seen so far.
            if counter > last and counter >> 6 == block and counter < REJECT_AFTER_MESSAGES:
                ring[block & _RING_MASK] |= 1 << (counter & 63)
                last = counter
            else:
                replay.last = last
                ok = replay.validate(counter)
                ring = replay.ring
                last = replay.last
                block = last >> 6
                if not ok:
                    drops["transport: replayed or too old"] += 1
                    continue
            rx += size
            source_at = source
            position_at = position
            if plen == 0:
                continue  # keepalive
            data_seen = True
            version = buf[pkt] >> 4
            if version == 4:
                if plen < 20:
                    drops["transport: short IPv4 packet"] += 1
                    continue
                length, addr = _ip4(buf, pkt)
                if length < 20 or length > plen:
                    drops["transport: bad IPv4 length"] += 1
                    continue
                if addr != addr4:
                    owner4 = cache4.get(addr) or lookup4(addr)
                    addr4 = addr
                if owner4 is not owner and (owner4 is None or owner4.send_to is not owner):
                    # (the widened rule: from a relay node, the sources of peers routed through it)
                    drops["transport: source address not allowed for peer"] += 1
                    continue
            elif version == 6:
                if plen < 40:
                    drops["transport: short IPv6 packet"] += 1
                    continue
                length = 40 + ((buf[pkt + 4] << 8) | buf[pkt + 5])
                if length > plen:
                    drops["transport: bad IPv6 length"] += 1
                    continue
                addr = _from(mv[pkt + 8:pkt + 24], "big")
                source_peer = cache6.get(addr) or lookup6(addr)
                if source_peer is not owner and (source_peer is None or source_peer.send_to is not owner):
                    drops["transport: source address not allowed for peer"] += 1
                    continue
            else:
                drops["transport: not IPv4/IPv6"] += 1
                continue
            end = pkt + length
            rx_data += 1
            if forwarding:
                target = destination_peer(dev.allowed_ips, buf, pkt, version)
                if target is not None and target is not owner:
                    forward_append((pkt, end, owner, target))
                    start = end
                    continue
            tun_append((start, end))
            start = end
    finally:
        mv.release()
        if kp is not None:
            replay.last = last
            _settle(touched, kp, source_at, data_seen, position_at, rx, rx_data)
    by_peer: dict = {}  # peer -> [source of its last packet, its position, data received?, keypairs seen]
    for kp, (source, data, position) in touched.items():
        if source is None:
            continue  # nothing authenticated under it
        seen = by_peer.get(kp.peer)
        if seen is None:
            by_peer[kp.peer] = [source, position, data, [kp]]
        else:
            if position > seen[1]:
                seen[0], seen[1] = source, position
            seen[2] = seen[2] or data
            seen[3].append(kp)
    for peer, (source, _, data, kps) in by_peer.items():
        _after_receive(dev, peer, source, data, kps, now)
    if forwarded:
        relaynode.forward(dev, buf, forwarded, now)
    if pending:
        dev.receive_control(pending, now)


def _settle(touched: dict, kp: "Keypair", source, data: bool, position, rx: int, rx_data: int) -> None:
    """Fold one run of packets under kp into the batch's per-keypair state and the peer's counters."""
    peer = kp.peer
    peer.rx_bytes += rx
    peer.rx_data_packets += rx_data
    state = touched.get(kp)
    if state is None:
        touched[kp] = [source, data, position]
    elif source is not None:
        state[0] = source
        state[1] = state[1] or data
        state[2] = position


def _after_receive(dev: "Device", peer: "Peer", source, data: bool, kps: list, now: float) -> None:
    """Per peer, once a batch: key confirmation, roaming (the last authenticated packet's source wins),
    timers (wireguard-go receive.go)."""
    dev.note_source(peer, source)  # before flushing staged packets, so they go where the peer now is
    for kp in kps:
        promoted, dropped = peer.keypairs.received_with(kp)
        if promoted:
            for old in dropped:
                dev.keypair_indices.pop(old.local_index, None)
            dev._handshake_complete(peer, now)
            dev._send_staged(peer, now)
    if peer.should_rekey_after_receive(now):
        dev._send_initiation(peer, now, retry=False)
    t = peer.timers
    t.on_any_authenticated_packet_traversal(now)
    t.on_any_authenticated_packet_received()
    if data:
        t.on_data_received(now)
