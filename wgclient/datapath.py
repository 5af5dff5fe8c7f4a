"""The transport-data hot path of the device core: seal packets from the TUN, open datagrams from UDP.

Written for throughput: one call handles a whole batch; messages are sealed and opened in place in the
`Outputs` buffers with `encrypt_into`/`decrypt_into` (no per-packet bytes objects); timer hooks and
roaming run once per peer per batch, not once per packet. The rules are those of
shared/protocol/wireguard.md §7; the handshake side lives in device.py.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Iterable

from cryptography.exceptions import InvalidTag

from .constants import MSG_TRANSPORT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, TRANSPORT_MIN_SIZE

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
    touched: dict = {}
    out = dev.out
    buf = out.send_buf
    mtu = dev.config.mtu
    start = out.sealed[-1][2] if out.sealed else 0
    mv = memoryview(buf)
    try:
        for packet in packets:
            n = len(packet)
            if n < 20:
                drops["tun: short packet"] += 1
                continue
            version = packet[0] >> 4
            if version == 4:
                addr = _u32(packet, 16)[0]
                peer = cache4.get(addr) or lookup4(addr)
            elif version == 6 and n >= 40:
                addr = _from(packet[24:40], "big")
                peer = cache6.get(addr) or lookup6(addr)
            else:
                drops["tun: not IPv4/IPv6"] += 1
                continue
            if peer is None:
                drops["tun: no peer for destination"] += 1
                continue
            kp = touched.get(peer)
            if kp is None:
                kp = peer.sending_keypair(now)
                if kp is None or peer.staged:
                    peer.stage(bytes(packet))
                    touched[peer] = False
                    continue
                touched[peer] = kp
            elif kp is False:
                peer.stage(bytes(packet))
                continue
            endpoint = peer.endpoint
            counter = kp.send_counter
            if counter >= REJECT_AFTER_MESSAGES or endpoint is None:
                peer.stage(bytes(packet))
                continue
            kp.send_counter = counter + 1
            end = start + sealed_size(n, mtu)
            if end > len(buf):
                mv.release()
                _grow(buf, end)
                mv = memoryview(buf)
            _seal_at(mv, start, end, kp, counter, packet, n)
            out.sealed.append((endpoint, start, end))
            peer.tx_bytes += end - start
            start = end
    finally:
        mv.release()
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
    touched: dict = {}  # keypair -> [last source, data received?, position of that packet in the batch]
    last_kp = state = None
    start = out.tun[-1][1] if out.tun else 0
    mv = memoryview(buf)
    try:
        for position, (data, source) in enumerate(datagrams):
            size = len(data)
            if size < TRANSPORT_MIN_SIZE or data[0] != MSG_TRANSPORT:
                dev.receive_control(data, source, now)
                continue
            kind, receiver, counter = _unpack_header(data)
            if kind != MSG_TRANSPORT:
                dev.receive_control(data, source, now)
                continue
            kp = keypairs.get(receiver)
            if kp is None:
                drops["transport: unknown receiver index"] += 1
                continue
            if now - kp.created >= REJECT_AFTER_TIME:
                drops["transport: keypair expired"] += 1
                continue
            plen = size - 32
            pkt = start + headroom
            end = pkt + plen
            if end > len(buf):
                mv.release()
                _grow(buf, end)
                mv = memoryview(buf)
            try:
                kp.recv.decrypt_into(_nonce(counter), data[16:], None, mv[pkt:end])
            except InvalidTag:
                drops["transport: authentication failed"] += 1
                continue
            if not kp.replay.validate(counter):
                drops["transport: replayed or too old"] += 1
                continue
            peer = kp.peer
            peer.rx_bytes += size
            if kp is not last_kp:
                last_kp = kp
                state = touched.get(kp)
                if state is None:
                    state = touched[kp] = [source, False, position]
            state[0] = source
            state[2] = position
            if plen == 0:
                continue  # keepalive
            state[1] = True
            version = buf[pkt] >> 4
            if version == 4:
                if plen < 20:
                    drops["transport: short IPv4 packet"] += 1
                    continue
                length = (buf[pkt + 2] << 8) | buf[pkt + 3]
                if length < 20 or length > plen:
                    drops["transport: bad IPv4 length"] += 1
                    continue
                addr = _u32(buf, pkt + 12)[0]
                owner = cache4.get(addr) or lookup4(addr)
            elif version == 6:
                if plen < 40:
                    drops["transport: short IPv6 packet"] += 1
                    continue
                length = 40 + ((buf[pkt + 4] << 8) | buf[pkt + 5])
                if length > plen:
                    drops["transport: bad IPv6 length"] += 1
                    continue
                addr = _from(mv[pkt + 8:pkt + 24], "big")
                owner = cache6.get(addr) or lookup6(addr)
            else:
                drops["transport: not IPv4/IPv6"] += 1
                continue
            if owner is not peer:
                drops["transport: source address not allowed for peer"] += 1
                continue
            out.tun.append((start, pkt + length))
            peer.rx_data_packets += 1
            start = pkt + length
    finally:
        mv.release()
    by_peer: dict = {}  # peer -> [source of its last packet, its position, data received?, keypairs seen]
    for kp, (source, data, position) in touched.items():
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


def _after_receive(dev: "Device", peer: "Peer", source, data: bool, kps: list, now: float) -> None:
    """Per peer, once a batch: key confirmation, roaming (the last authenticated packet's source wins),
    timers (wireguard-go receive.go)."""
    if peer.managed:
        dev.out.heard.append((peer, source))
    else:
        peer.endpoint = source  # before flushing staged packets, so they go where the peer now is
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
