"""DERP over QUIC end to end on loopback (docs/derp-quic.md): real UDP sockets, real TLS, in-process relay."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from dataclasses import replace

import pytest
from aioquic.quic.configuration import QuicConfiguration

from derp import quicwire as W
from derp.aio.client import DerpClient, targets_for_url
from derp.aio.clientconn import ConnectError
from derp.aio.quic_client import QuicDerpConn, dial_quic
from derp.certpem import pem_certificates
from derp.errors import UsageError
from derp.server import AccessList, ServerConfig
from derp_support import client, new_key
from quic_support import close_all, quic_client, quic_pair, quic_relay, send_datagram

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 45.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recv_data(c, timeout: float = 3.0) -> bytes:
    return (await c.recv_packet(timeout)).data


def test_quic_clients_exchange_packets_as_datagrams(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            async with quic_pair(port, pki["ca"]) as (a, ka, b, kb):
                for i in range(20):
                    assert send_datagram(a, kb, b"a->b %d" % i)
                    assert await recv_data(b) == b"a->b %d" % i
                    assert send_datagram(b, ka, b"b->a %d" % i)
                    assert await recv_data(a) == b"b->a %d" % i
                stats = server.quic.stats
                assert stats["datagrams_received"] >= 40 and stats["datagrams_relayed"] >= 40
                assert stats["stream_packets"] == 0
                assert a.stats.extra["quic_datagrams_sent"] == 20
                assert b.stats.extra["quic_datagrams_received"] == 20
                assert server.quic.clients() == 2
                from aioquic.tls import Epoch   # the handshake buffers went once it completed, both ends
                for quic in [a.stream.quic, b.stream.quic] + [x.quic for x in server.quic.sessions]:
                    assert quic._crypto_buffers[Epoch.INITIAL].capacity == 0
                    assert quic._crypto_buffers[Epoch.HANDSHAKE].capacity == 0
                    assert quic._crypto_buffers[Epoch.ONE_RTT].capacity == 0
    run(main())


def test_oversize_packet_goes_on_the_stream_both_ways(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            async with quic_pair(port, pki["ca"]) as (a, ka, b, kb):
                big = bytes(range(256)) * 16   # 4 KiB: no datagram holds it
                assert send_datagram(a, kb, big)
                assert await recv_data(b) == big
                assert a.stats.extra["quic_stream_packets"] == 1 and a.stats.extra["quic_datagrams_sent"] == 0
                assert server.quic.stats["stream_packets"] == 1
                limit = a.stream.datagram_limit
                edge = b"x" * (limit - 37)         # the largest packet a datagram carries
                assert send_datagram(a, kb, edge)
                assert await recv_data(b) == edge
                assert a.stats.extra["quic_datagrams_sent"] == 1
                assert server.quic.stats["datagrams_relayed"] == 1
                assert send_datagram(a, kb, edge + b"y")   # one byte more: the stream
                assert await recv_data(b) == edge + b"y"
                assert a.stats.extra["quic_stream_packets"] == 2
    run(main())


def test_quic_and_tcp_clients_reach_each_other(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            (pq, kq), (pt, kt) = new_key(), new_key()
            q = await quic_client(pq, port, pki["ca"])
            t = client(f"https://127.0.0.1:{port}/derp", pt, pki["ca"], transport="upgrade")
            await t.start(timeout=5)
            try:
                for i in range(5):
                    assert send_datagram(q, kt, b"q->t %d" % i)
                    assert await recv_data(t) == b"q->t %d" % i
                    assert t.send_packet(kq, b"t->q %d" % i)
                    assert await recv_data(q) == b"t->q %d" % i
                assert server.quic.stats["datagrams_relayed"] == 5   # TCP -> QUIC went as datagrams
            finally:
                await close_all(q, t)
    run(main())


def _dial_fails(priv, port, ca, **kw) -> str:
    async def attempt():
        try:
            c = await quic_client(priv, port, ca, **kw)
        except ConnectError as exc:
            return str(exc)
        await c.close()
        return ""
    return attempt()


def test_acl_and_max_clients_apply_to_quic(pki) -> None:
    async def main():
        (pa, ka), (pb, kb), (pc, kc) = new_key(), new_key(), new_key()
        async with quic_relay(pki, acl=AccessList({ka, kb})) as (server, port):
            assert await _dial_fails(pc, port, pki["ca"]) != ""      # not an allowed key
            assert server.relay.refused.get("acl") == 1
            a = await quic_client(pa, port, pki["ca"])
            await close_all(a)
        async with quic_relay(pki, config=ServerConfig(open_relay=True, max_clients=1)) as (server, port):
            a = await quic_client(pa, port, pki["ca"])
            try:
                assert await _dial_fails(pb, port, pki["ca"]) != ""
                assert server.relay.refused.get("max_clients") == 1
            finally:
                await close_all(a)
    run(main())


def test_per_ip_limit_applies_to_quic_and_its_answer_is_the_reason(pki) -> None:
    async def main():
        async with quic_relay(pki, max_conns_per_ip=1) as (server, port):
            (pa, ka), (pb, kb) = new_key(), new_key()
            a = await quic_client(pa, port, pki["ca"])
            try:
                assert await _dial_fails(pb, port, pki["ca"]) == "server answered HTTP 429 to the upgrade"
                assert server.http_counters["per_ip_limited"] == 1
            finally:
                await close_all(a)
    run(main())


def test_tls_verification_is_on_by_default(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            (pa, ka) = new_key()
            why = await _dial_fails(pa, port, None)      # the private CA is not trusted
            assert why.startswith("TLS certificate verify failed"), why
            # pinned (sha256-raw CertName) and InsecureForTests targets connect without the CA
            with open(os.path.join(pki["certdir"], "127.0.0.1.crt"), "rb") as fh:
                der = pem_certificates(fh.read())[0]
            url = targets_for_url(f"https://127.0.0.1:{port}/derp")[0]
            for target in (replace(url, pin=hashlib.sha256(der).digest()), replace(url, insecure=True)):
                c = DerpClient(pa, [target], reconnect=False)
                conn = await asyncio.wait_for(dial_quic(c, target, port), 5)
                conn._finish("done")
            garbage_ca = os.path.join(os.path.dirname(pki["ca"]), "not-a-ca.pem")
            with open(garbage_ca, "w") as fh:
                fh.write("not PEM\n")
            for ca in (garbage_ca, garbage_ca + ".missing"):
                with pytest.raises(UsageError, match="cannot load CA file"):
                    await dial_quic(DerpClient(pa, [url], ca_file=ca, reconnect=False), url, port)
            bad = replace(url, pin=b"\0" * 32)
            with pytest.raises(ConnectError, match="pinned"):
                await asyncio.wait_for(dial_quic(DerpClient(pa, [bad], reconnect=False), bad, port), 5)
            # CertName: the chain is verified and the name checked after the handshake
            named = replace(url, cert_name="derp.example.net")
            with pytest.raises(ConnectError, match="CertName"):
                await asyncio.wait_for(dial_quic(DerpClient(pa, [named], ca_file=pki["ca"], reconnect=False),
                                                 named, port), 5)
            good = replace(url, cert_name="127.0.0.1")
            conn = await asyncio.wait_for(dial_quic(DerpClient(pa, [good], ca_file=pki["ca"], reconnect=False),
                                                    good, port), 5)
            conn._finish("done")
    run(main())


async def _raw_handshake(port: int, alpn: list[str] | None) -> int:
    """An aioquic client offering `alpn`: the error code its connection ends with."""
    from aioquic.asyncio import connect
    cfg = QuicConfiguration(is_client=True, alpn_protocols=alpn, verify_mode=ssl.CERT_NONE)
    try:
        async with connect("127.0.0.1", port, configuration=cfg, wait_connected=True):
            return -1
    except ConnectionError:
        return 0


def test_other_or_no_alpn_is_refused(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            assert await asyncio.wait_for(_raw_handshake(port, ["h3"]), 10) == 0
            assert await asyncio.wait_for(_raw_handshake(port, None), 10) == 0
            assert server.quic.stats["dropped_refused_alpn"] == 2
            (pa, ka), (pb, kb) = new_key(), new_key()
            a = await quic_client(pa, port, pki["ca"])   # the right ALPN still works
            await close_all(a)
    run(main())


def test_garbage_and_bad_datagrams_are_counted_and_others_served(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            stats = server.quic.stats
            (pa, ka), (pb, kb) = new_key(), new_key()
            a = await quic_client(pa, port, pki["ca"])
            b = await quic_client(pb, port, pki["ca"])
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            loop = asyncio.get_running_loop()
            try:
                s.sendto(b"\x40" + os.urandom(40), ("127.0.0.1", port))        # short header, unknown CID
                s.sendto(b"\xc0\x00\x00\x00", ("127.0.0.1", port))             # truncated long header
                s.sendto(b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x00\x00\x40\x64" + os.urandom(100),
                         ("127.0.0.1", port))                                   # a tiny Initial
                s.sendto(b"\xc0\x1a\x2a\x3a\x4a\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + bytes(1200),
                         ("127.0.0.1", port))                                   # an unknown version
                vn, _ = await asyncio.wait_for(loop.sock_recvfrom(s, 2048), 3)
                assert vn[1:5] == b"\0\0\0\0"                                    # Version Negotiation
                s.sendto(b"", ("127.0.0.1", port))
                for _ in range(30):   # Initials of version 1 that do not decrypt: no connection is kept
                    s.sendto(b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00\x44\xc0"
                             + os.urandom(1216), ("127.0.0.1", port))
                conn = a.stream
                for junk in (b"junk", W.packet_frame(W.RECV, kb, b"wrong type"),
                             W.packet_frame(W.SEND, kb, b"short")[:-1] + b""):
                    conn.quic.send_datagram_frame(junk)
                conn.quic.send_stream_data(4, b"GET / HTTP/1.1\r\n\r\n")   # a second stream: reset
                conn._soon()
                deadline = loop.time() + 5
                while stats["dropped_bad_datagram"] < 3 or not stats["streams_refused"]:
                    assert loop.time() < deadline, stats
                    await asyncio.sleep(0.02)
                assert stats["dropped_unknown_connection"] == 2 and stats["dropped_garbage"] == 32, stats
                assert server.quic.half_open == 0 and len(server.quic.sessions) == 2
                assert send_datagram(a, kb, b"still served")
                assert await recv_data(b) == b"still served"
            finally:
                s.close()
                await close_all(a, b)
    run(main())


def test_datagrams_before_admission_and_over_the_byte_rate_are_dropped(pki) -> None:
    async def main():
        async with quic_relay(pki, client_rate=20000, client_burst=70000) as (server, port):
            stats = server.quic.stats
            async with quic_pair(port, pki["ca"]) as (a, ka, b, kb):
                sent = sum(send_datagram(a, kb, bytes(1000)) for _ in range(150))   # 150 kB, burst 70 kB
                assert sent == 150
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 5
                while stats["dropped_rate_limited"] + stats["datagrams_received"] < 150:
                    assert loop.time() < deadline, stats
                    await asyncio.sleep(0.02)
                assert stats["dropped_rate_limited"] > 0 and stats["datagrams_received"] >= 60, stats
            # a datagram before the DERP session exists: dropped as not_registered
            pa, _ = new_key()
            c = DerpClient(pa, targets_for_url(f"https://127.0.0.1:{port}/derp"), ca_file=pki["ca"], reconnect=False)
            target = c.targets[0]
            real_begin = QuicDerpConn.begin

            def early_begin(self):
                self.datagram_limit = 1000
                self.quic.send_datagram_frame(W.packet_frame(W.SEND, kb, b"too early"))
                real_begin(self)
            QuicDerpConn.begin = early_begin
            try:
                conn = await asyncio.wait_for(dial_quic(c, target, port), 5)
            finally:
                QuicDerpConn.begin = real_begin
            deadline = loop.time() + 5
            while stats["dropped_not_registered"] < 1:
                assert loop.time() < deadline, stats
                await asyncio.sleep(0.02)
            conn._finish("done")
    run(main())


def test_a_new_certificate_goes_to_new_connections(pki, tmp_path) -> None:
    from derp.aio.certs import make_ca, make_cert
    from derp.aio.certstore import CertStore
    from quic_support import pem_pair
    ca2 = make_ca("wgc renewal test CA")
    (tmp_path / "ca2.pem").write_bytes(ca2.cert_pem)
    pair2 = make_cert(["127.0.0.1"], ca2)
    (tmp_path / "c2.crt").write_bytes(pair2.cert_pem)
    (tmp_path / "c2.key").write_bytes(pair2.key_pem)

    async def main():
        async with quic_relay(pki) as (server, port):
            store = CertStore("127.0.0.1")
            store.load_files(os.path.join(pki["certdir"], "127.0.0.1.crt"), os.path.join(pki["certdir"], "127.0.0.1.key"))
            assert store.pem == pem_pair(pki)
            server.quic.cert_source = lambda: store.pem
            (pa, ka), (pb, kb) = new_key(), new_key()
            a = await quic_client(pa, port, pki["ca"])
            store.load_files(str(tmp_path / "c2.crt"), str(tmp_path / "c2.key"))   # a renewal
            assert (await _dial_fails(pb, port, pki["ca"])).startswith("TLS certificate verify failed")
            b = await quic_client(pb, port, str(tmp_path / "ca2.pem"))
            try:
                assert send_datagram(b, ka, b"old connection kept")
                assert await recv_data(a) == b"old connection kept"
            finally:
                await close_all(a, b)
    run(main())


def test_quic_over_ipv6_loopback(pki) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    async def main():
        async with quic_relay(pki, host="::1") as (server, port):
            (pa, ka), (pb, kb) = new_key(), new_key()
            clients = []
            for priv in (pa, pb):
                c = DerpClient(priv, [replace(targets_for_url(f"https://[::1]:{port}/derp")[0], insecure=True)],
                               reconnect=False)
                c.stream = await asyncio.wait_for(dial_quic(c, c.targets[0], port), 5)
                c._connected.set()
                clients.append(c)
            a, b = clients
            try:
                assert send_datagram(a, kb, b"over ::1")
                assert await recv_data(b) == b"over ::1"
                assert server.quic.socks[0].family == socket.AF_INET6
            finally:
                await close_all(a, b)
    run(main())


def test_a_client_flooding_its_paused_stream_is_cut(pki) -> None:
    async def main():
        # frames time out only after 60 s here: what cuts the client is the hold limit
        async with quic_relay(pki, client_rate=1000, client_burst=70000, frame_timeout=60) as (server, port):
            (pa, ka), (pb, kb) = new_key(), new_key()
            a = await quic_client(pa, port, pki["ca"])
            conn = a.stream
            frame = conn.core.send_packet(kb, bytes(60000))   # on the stream: too big for a datagram
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            try:
                while not conn.done.done():    # over its byte rate: the relay reads no more, QUIC still acks
                    assert loop.time() < deadline, "never cut"
                    conn.write(frame)
                    await asyncio.sleep(0.002)
                assert server.quic.clients() == 0
            finally:
                await close_all(a)
    run(main())


def test_half_open_connections_are_bounded(pki, monkeypatch) -> None:
    import derp.aio.quic_server as QS

    async def main():
        async with quic_relay(pki) as (server, port):
            monkeypatch.setattr(QS, "QUIC_MAX_HALF_OPEN", 0)   # every new handshake is over the bound
            pa, _ = new_key()
            with pytest.raises((ConnectError, asyncio.TimeoutError)):
                await quic_client(pa, port, pki["ca"], timeout=1.0)
            assert server.quic.stats["dropped_half_open_limit"] >= 1
            assert server.quic.stats["connections"] == 0 and server.quic.half_open == 0
            monkeypatch.setattr(QS, "QUIC_MAX_HALF_OPEN", 1)
            async with quic_pair(port, pki["ca"]):
                assert server.quic.half_open == 0     # established: no longer half-open
    run(main())


def test_a_stalled_handshake_is_closed(pki, monkeypatch) -> None:
    import time

    import derp.aio.quic_server as QS
    from aioquic.quic.connection import QuicConnection
    monkeypatch.setattr(QS, "HANDSHAKE_TIMEOUT", 0.3)

    async def main():
        async with quic_relay(pki) as (server, port):
            quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=[W.ALPN],
                                                                  verify_mode=ssl.CERT_NONE))
            quic.connect(("127.0.0.1", port), time.monotonic())
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for data, addr in quic.datagrams_to_send(time.monotonic()):   # the Initial, then silence
                    s.sendto(data, addr)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 5
                while server.quic.half_open != 1:
                    assert loop.time() < deadline
                    await asyncio.sleep(0.01)
                while server.quic.stats["handshake_timeouts"] != 1:
                    assert loop.time() < deadline
                    await asyncio.sleep(0.05)
                assert server.quic.half_open == 0 and not server.quic.sessions
            finally:
                s.close()
    run(main())


def test_shutdown_with_a_websocket_client_told_of_a_peer_leaving(pki) -> None:
    """A PeerGone for a WebSocket client that was already sent its going-away close is dropped, not an
    InvalidState traceback (found with QUIC clients leaving during shutdown; TCP ones may too)."""
    from derp import frames as F

    async def main():
        async with quic_relay(pki) as (server, port):
            (pw, kw), (pt, kt) = new_key(), new_key()
            w = client(f"https://127.0.0.1:{port}/derp", pw, pki["ca"], transport="websocket", reconnect=False)
            t = client(f"https://127.0.0.1:{port}/derp", pt, pki["ca"], transport="upgrade", reconnect=False)
            await w.start(timeout=5)
            await t.start(timeout=5)
            try:
                from derp_support import exchange
                await exchange(t, w, kw, b"t to w")        # so the relay tells w when t leaves
                by_key = {c.conn.key: c for c in server.conns if c.conn is not None}
                by_key[kw].going_away(F.Restarting(500, 5000).encode())   # w: told first ...
                by_key[kt].abort("leaves")                                 # ... then t leaves: PeerGone to w
                server.flush()
            finally:
                await close_all(w, t)
    run(main())


def test_a_burst_for_one_receiver_is_sent_not_dropped(pki, monkeypatch) -> None:
    import derp.aio.quic_server as QS
    monkeypatch.setattr(QS, "QUIC_DATAGRAM_QUEUE", 8)   # fewer than one read batch brings

    async def main():
        async with quic_relay(pki) as (server, port):
            got = []
            (pa, ka), (pb, kb) = new_key(), new_key()
            a = await quic_client(pa, port, pki["ca"])
            b = await quic_client(pb, port, pki["ca"], on_packet=lambda src, data: got.append(data),
                                  on_event=lambda ev: None)
            try:
                assert send_datagram(a, kb, b"warm-up")     # b is known to the relay
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 5
                while not got:
                    assert loop.time() < deadline
                    await asyncio.sleep(0.01)
                for i in range(40):                         # small: several per QUIC packet, one batch
                    assert send_datagram(a, kb, b"%03d" % i)
                while len(got) < 41 and loop.time() < deadline:
                    await asyncio.sleep(0.01)
                assert server.quic.stats["dropped_queue_full"] == 0
                assert sorted(got[1:]) == [b"%03d" % i for i in range(40)]
            finally:
                await close_all(a, b)
    run(main())


def test_a_burst_from_the_client_is_sent_not_dropped(pki, monkeypatch) -> None:
    import derp.aio.quic_client as QC
    monkeypatch.setattr(QC, "QUIC_DATAGRAM_QUEUE", 8)

    async def main():
        async with quic_relay(pki) as (server, port):
            async with quic_pair(port, pki["ca"]) as (a, ka, b, kb):
                assert all(send_datagram(a, kb, b"%03d" % i) for i in range(40))   # in one turn of the loop
                assert a.stats.extra["quic_dropped_queue_full"] == 0
                got = [await recv_data(b) for _ in range(40)]
                assert sorted(got) == [b"%03d" % i for i in range(40)]
    run(main())



def test_a_burst_beyond_the_window_and_the_queue_is_dropped_and_counted(pki) -> None:
    """5000 datagrams of 1000 bytes in one turn of the loop: the window takes a few, the queue holds
    what 20 ms at the pacing rate allows (at least 256), the rest is dropped and counted, and what was
    queued is delivered; nothing waits without bound."""
    from derp.aio.quiccc import queue_limit
    from derp.constants import QUIC_DATAGRAM_QUEUE

    async def main():
        async with quic_relay(pki) as (server, port):
            async with quic_pair(port, pki["ca"]) as (a, ka, b, kb):
                conn = a.stream
                limit = queue_limit(conn.quic)
                sent = sum(send_datagram(a, kb, b"%04d" % i + bytes(996)) for i in range(5000))
                assert QUIC_DATAGRAM_QUEUE <= limit < 5000
                assert len(conn._pending) <= limit
                dropped = a.stats.extra["quic_dropped_queue_full"]
                assert dropped > 0 and sent + dropped == 5000
                got = 0
                try:
                    while got < sent:
                        await recv_data(b, timeout=3.0)
                        got += 1
                except asyncio.TimeoutError:
                    pass
                assert got >= sent * 0.9, (got, sent)   # what was taken goes out (the relay may drop a few)
    run(main())

def test_the_client_socket_carries_the_firewall_mark(pki) -> None:
    if os.geteuid() != 0:
        pytest.skip("SO_MARK needs CAP_NET_ADMIN")

    async def main():
        async with quic_relay(pki) as (server, port):
            pa, _ = new_key()
            c = await quic_client(pa, port, pki["ca"], fwmark=0x5ca1)
            try:
                sock = c.stream.transport.get_extra_info("socket")
                assert sock.type == socket.SOCK_DGRAM
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x5ca1
                c.set_fwmark(0x5ca2)     # DerpClient's own re-marking reaches the QUIC socket too
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x5ca2
            finally:
                await close_all(c)
    run(main())


def test_closing_the_listener_closes_its_clients_at_once(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            async with quic_pair(port, pki["ca"]) as (a, ka, b, kb):
                server.quic.close_all()
                assert not server.quic.sessions and not server.conns and server.quic.half_open == 0
                reason = await asyncio.wait_for(a.stream.done, 5)   # told by CONNECTION_CLOSE, not a timeout
                assert reason == "connection closed by the server", reason
    run(main())
