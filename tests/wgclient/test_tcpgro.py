"""Userspace TCP GRO (wgclient.tcpgro): what is merged, what is not, and that nothing is lost or altered."""
from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, strategies as st

from wgclient.tcpgro import (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
                             VNET_HDR_LEN, TcpCoalescer)

ACK, PSH, SYN, FIN = 0x10, 0x08, 0x02, 0x01


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_segment(seq: int, payload: bytes, *, v6: bool = False, flags: int = ACK, sport: int = 5001,
                ack: int = 77, options: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, 443, seq, ack, (5 + len(options) // 4) << 4, flags, 512, 0, 0)
    tcp += options
    if v6:
        src, dst = ipaddress.IPv6Address("fd00::1").packed, ipaddress.IPv6Address("fd00::2").packed
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, 64, src, dst)
    else:
        src, dst = ipaddress.IPv4Address("10.0.0.1").packed, ipaddress.IPv4Address("10.0.0.2").packed
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), seq & 0xFFFF, 0x4000, 64, 6, 0,
                         src, dst)
    return ip + tcp + payload


def lay_out(packets: list[bytes]) -> tuple[bytearray, list[tuple[int, int]]]:
    """Packets in one buffer with VNET_HDR_LEN bytes of (dirty) headroom each, as the device leaves them."""
    buf = bytearray()
    spans = []
    for p in packets:
        start = len(buf)
        buf += b"\xAA" * VNET_HDR_LEN + p
        spans.append((start, len(buf)))
    return buf, spans


def resegment(write: bytes) -> list[tuple[bytes, int, bytes]]:
    """What the kernel does with a written super-packet: (flow ports, seq, payload) per segment."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from("<BBHHHH", write)
    pkt = write[VNET_HDR_LEN:]
    iph = 40 if pkt[0] >> 4 == 6 else 20
    tcph = (pkt[iph + 12] >> 4) * 4
    seq = struct.unpack_from("!I", pkt, iph + 4)[0]
    ports = pkt[iph:iph + 4]
    payload = pkt[iph + tcph:]
    if gso_type == 0:
        return [(ports, seq, payload)]
    return [(ports, seq + i, payload[i:i + gso_size]) for i in range(0, len(payload), gso_size)]


def test_bulk_segments_merge_into_one_gso_write_v4():
    segs = [tcp_segment(1000 + i * 1360, bytes([i]) * 1360) for i in range(10)]
    buf, spans = lay_out(segs)
    writes = [bytes(w) for w in TcpCoalescer().writes(buf, spans)]
    assert len(writes) == 1
    w = writes[0]
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from("<BBHHHH", w)
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 40, 1360, 20, 16)
    ip = w[VNET_HDR_LEN:]
    assert struct.unpack_from("!H", ip, 2)[0] == len(ip) == 40 + 13600
    assert ones_sum(ip[:20]) == 0xFFFF  # a valid IPv4 header checksum
    # The TCP checksum field holds the pseudo-header sum the kernel completes.
    pseudo = ones_sum(ip[12:20] + struct.pack("!HH", 6, len(ip) - 20))
    assert struct.unpack_from("!H", ip, 36)[0] == pseudo
    assert ip[40:] == b"".join(bytes([i]) * 1360 for i in range(10))


def test_bulk_segments_merge_v6_and_psh_ends_the_group():
    segs = [tcp_segment(5 + i * 1000, bytes([i]) * 1000, v6=True, flags=ACK | (PSH if i == 3 else 0))
            for i in range(6)]
    buf, spans = lay_out(segs)
    writes = [bytes(w) for w in TcpCoalescer().writes(buf, spans)]
    assert len(writes) == 2
    assert struct.unpack_from("<BB", writes[0])[1] == VIRTIO_NET_HDR_GSO_TCPV6
    first = writes[0][VNET_HDR_LEN:]
    assert struct.unpack_from("!H", first, 4)[0] == 20 + 4000  # IPv6 payload length
    assert first[40 + 13] == ACK | PSH  # the last merged segment's PSH carries over


def test_not_merged_syn_fin_gaps_other_flows_and_options():
    segs = [
        tcp_segment(0, b"", flags=SYN),                    # no payload, SYN
        tcp_segment(100, b"a" * 100),
        tcp_segment(300, b"b" * 100),                      # gap in sequence
        tcp_segment(400, b"c" * 100, sport=6000),          # another flow
        tcp_segment(500, b"d" * 100, flags=ACK | FIN),     # FIN
        tcp_segment(600, b"e" * 100, options=b"\x01\x01\x08\x0a" + bytes(8)),
        tcp_segment(700, b"f" * 100, options=b"\x01\x01\x08\x0a" + bytes(7) + b"\x01"),  # options differ
    ]
    buf, spans = lay_out(segs)
    writes = [bytes(w) for w in TcpCoalescer().writes(buf, spans)]
    assert len(writes) == len(segs)
    for w, seg in zip(writes, segs):
        assert w[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)  # dirty headroom replaced by an empty header
        assert w[VNET_HDR_LEN:] == seg


def test_shorter_segment_ends_a_group_and_larger_one_starts_a_new_one():
    segs = [tcp_segment(0, b"x" * 100), tcp_segment(100, b"y" * 50), tcp_segment(150, b"z" * 100),
            tcp_segment(250, b"w" * 200)]
    buf, spans = lay_out(segs)
    writes = [bytes(w) for w in TcpCoalescer().writes(buf, spans)]
    segments = [s for w in writes for s in resegment(w)]
    assert [s[2] for s in segments] == [b"x" * 100, b"y" * 50, b"z" * 100, b"w" * 200]
    assert len(writes) == 3


packet_spec = st.tuples(st.sampled_from([5001, 5002]), st.integers(1, 300), st.booleans(),
                        st.sampled_from([ACK, ACK | PSH, ACK | FIN, SYN]), st.booleans())


@given(st.lists(packet_spec, max_size=40))
def test_writes_carry_exactly_the_same_segments_in_order(specs):
    seqs = {5001: 1, 5002: 1}
    segs = []
    for sport, size, gap, flags, v6 in specs:
        if gap:
            seqs[sport] += 7
        payload = bytes([size % 256]) * size
        segs.append(tcp_segment(seqs[sport], payload, sport=sport, flags=flags, v6=v6))
        seqs[sport] += size
    buf, spans = lay_out(segs)
    writes = [bytes(w) for w in TcpCoalescer().writes(buf, spans)]
    got = [s for w in writes for s in resegment(w)]
    want = [s for seg in segs for s in resegment(bytes(VNET_HDR_LEN) + seg)]
    assert got == want
