"""TCP receive coalescing for TUN writes (GRO in userspace), as wireguard-go's tun offload does.

Decrypted packets that are consecutive segments of one TCP flow are merged into one super-packet and
written to a TUN opened with IFF_VNET_HDR, preceded by a virtio-net header that says "GSO TCP, checksum
to be completed". The kernel then takes one 64 KiB packet instead of ~45 small ones, and its TCP stack
acknowledges per super-packet, so fewer ACKs travel back through the tunnel. Checksums of the merged
segments are not verified here: WireGuard already authenticated every byte (the kernel's WireGuard marks
decrypted packets checksum-verified for the same reason). Every packet is written with a virtio header;
packets that cannot merge get an all-zero one.

Pure: works on caller-owned buffers, no I/O. A merged group is handed back as a list of views for
`os.writev` (first packet with patched headers, then the other payloads), so no payload is copied.
"""
from __future__ import annotations

import struct

VNET_HDR_LEN = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
MAX_SUPER_PACKET = 65535 - 100  # stays under the 64 KiB IP limit with headers
MAX_SEGMENTS = 64

_vnet = struct.Struct("<BBHHHH")
_u16 = struct.Struct("!H")
_ZERO_VNET = bytes(VNET_HDR_LEN)
_from = int.from_bytes
# TCP flags: merge only plain ACK segments, optionally with PSH (which then ends the group).
_ACK, _PSH = 0x10, 0x08


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _mask(iph: int, tcph: int) -> int:
    """All-ones over the IP+TCP headers but for the fields merged segments may differ in: IP total
    length, ID and checksum (IPv6: payload length), TCP sequence number, PSH flag and checksum."""
    hdr = bytearray(b"\xff" * (iph + tcph))
    variable = [(2, 6), (10, 12)] if iph == 20 else [(4, 6)]
    variable += [(iph + 4, iph + 8), (iph + 16, iph + 18)]
    for a, b in variable:
        hdr[a:b] = bytes(b - a)
    hdr[iph + 13] &= ~_PSH & 0xFF
    return int.from_bytes(hdr, "big")


_MASKS: dict[tuple[int, int], int] = {}


def _flow(buf, p: int, end: int):
    """(key, ip header length, tcp header length, payload length, seq, flags) or None if not mergeable.

    The key is the IP+TCP header as an integer with the per-segment fields masked out, so everything
    else (addresses, ports, ack, window, options, TOS/TTL/DF or traffic class/flow label/hop limit, header
    lengths) must match for two segments to merge. One slice and one int conversion per packet.
    """
    b0 = buf[p]
    if b0 == 0x45:
        if buf[p + 9] != 6 or buf[p + 6] & 0x3F or buf[p + 7]:
            return None  # not TCP, or a fragment
        iph = 20
    elif b0 >> 4 == 6:
        if buf[p + 6] != 6:
            return None
        iph = 40
    else:
        return None  # IPv4 with options, or not IP
    t = p + iph
    if end - t < 20:
        return None
    tcph = (buf[t + 12] >> 4) * 4
    flags = buf[t + 13]
    hdr = iph + tcph
    payload = end - p - hdr
    if tcph < 20 or payload <= 0 or flags & ~(_ACK | _PSH) or not flags & _ACK:
        return None
    mask = _MASKS.get((iph, tcph))
    if mask is None:
        mask = _MASKS[(iph, tcph)] = _mask(iph, tcph)
    h = _from(buf[p:p + hdr], "big")
    seq = (h >> ((tcph - 8) * 8)) & 0xFFFFFFFF
    return h & mask, iph, tcph, payload, seq, flags


class TcpCoalescer:
    """Turns a list of decrypted packets into TUN writes, merging TCP segments where it can."""

    def __init__(self) -> None:
        self.merged_packets = 0  # segments that went into a super-packet
        self.super_packets = 0

    def writes(self, buf: bytearray, packets: list[tuple[int, int]]) -> list[bytes]:
        """The TUN writes of `iovecs` joined into one bytes each (for tests and slow paths)."""
        return [b"".join(iov) for iov in self.iovecs(buf, packets)]

    def iovecs(self, buf: bytearray, packets: list[tuple[int, int]]) -> list[list[memoryview]]:
        """packets are (start, end) in buf, each with VNET_HDR_LEN bytes of headroom at start.

        Returns one list of views per TUN write, for `os.writev`: a merged group is the first packet
        (its headroom now holding the virtio-net header, its IP and TCP headers patched in place in buf)
        followed by the payloads of the others, so no payload is copied here. Valid until buf changes.
        """
        writes: list[list[memoryview]] = []
        mv = memoryview(buf)
        i, n = 0, len(packets)
        while i < n:
            start, end = packets[i]
            p = start + VNET_HDR_LEN
            info = _flow(buf, p, end)
            j = i + 1
            if info is not None and not info[5] & _PSH:
                # The rest of the group is checked with one masked compare of its header as an integer:
                # equal to the first one's key means same flow, non-fragment, same header lengths and
                # flags (ACK, maybe PSH); then only the sequence number and the payload size are left.
                key, iph, tcph, mss, seq, _ = info
                hdr = iph + tcph
                mask = _MASKS[(iph, tcph)]
                seq_shift = (tcph - 8) * 8
                psh_shift = (tcph - 14) * 8 + 3
                total = end - p
                nxt = seq + mss
                limit = min(n, i + MAX_SEGMENTS)
                while j < limit:
                    s2, e2 = packets[j]
                    q = s2 + VNET_HDR_LEN
                    size = e2 - q - hdr
                    if size <= 0 or size > mss or total + size > MAX_SUPER_PACKET:
                        break
                    h = _from(buf[q:q + hdr], "big")
                    if h & mask != key or (h >> seq_shift) & 0xFFFFFFFF != nxt:
                        break
                    total += size
                    nxt += size
                    j += 1
                    if size < mss or (h >> psh_shift) & 1:
                        break
            if j - i == 1:
                mv[start:p] = _ZERO_VNET
                writes.append([mv[start:end]])
                i = j
                continue
            # The super-packet: virtio-net header in the first packet's headroom, its headers patched for
            # the merged length, then the other segments' payloads.
            v6 = iph == 40
            _vnet.pack_into(buf, start, VIRTIO_NET_HDR_F_NEEDS_CSUM,
                            VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4, hdr, mss, iph, 16)
            iov = [mv[start:end]]
            skip = VNET_HDR_LEN + hdr
            for s2, e2 in packets[i + 1:j]:
                iov.append(mv[s2 + skip:e2])
            t = p + iph
            buf[t + 13] = buf[s2 + VNET_HDR_LEN + iph + 13]  # PSH of the last segment carries over
            tcp_len = total - iph
            if v6:
                _u16.pack_into(buf, p + 4, tcp_len)
                pseudo = _from(buf[p + 8:p + 40], "big") % 0xFFFF + 6 + tcp_len
            else:
                _u16.pack_into(buf, p + 2, total)
                buf[p + 10] = buf[p + 11] = 0
                _u16.pack_into(buf, p + 10, 0xFFFF ^ (_from(buf[p:p + 20], "big") % 0xFFFF))
                pseudo = _from(buf[p + 12:p + 20], "big") % 0xFFFF + 6 + tcp_len
            _u16.pack_into(buf, t + 16, _fold(pseudo))
            writes.append(iov)
            self.merged_packets += j - i
            self.super_packets += 1
            i = j
        return writes
