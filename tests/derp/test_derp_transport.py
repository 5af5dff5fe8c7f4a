"""The DERP client's transport choice end to end on loopback (docs/derp-quic.md, "Client transport choice"):
a real `derp.aio` relay with its QUIC listener, clients built from a DERP map, and an in-process UDP relay
between client and QUIC listener that can blackhole the datagrams. QUIC is chosen when the node has
WgcQUICPort and UDP works; TCP when the field is absent (no UDP packet reaches the node); TCP within a
bounded time when QUIC is refused or blackholed; a QUIC link that stalls mid-session falls back to TCP with
packets flowing; QUIC coming back replaces TCP without a restart and without losing packets."""
from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from derp import transport_choice as TC
from derp.protocol import Connected
from derp.aio.client import DerpClient, Disconnected, TransportChanged
from derp.aio.server import DerpServer, ServerOptions
from derp.aio.targets import targets_for_region
from derp.aio.tls import load_server_context
from derp.derpmap import parse_derpmap
from derp.errors import UsageError
from derp.server import AccessList, Relay, ServerConfig

from derp_support import client, new_key, until
from quic_support import quic_relay

pytestmark = pytest.mark.timeout(90)
FAST = TC.ChoiceConfig(retry_first=0.5, retry_max=1.0)   # background retries within a test's time


def run(coro, timeout: float = 75.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def region(tcp_port: int, quic_port: int | None):
    node = {"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "DERPPort": tcp_port}
    if quic_port is not None:
        node["WgcQUICPort"] = quic_port
    return parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [node]}}})).regions[900]


def map_client(priv: bytes, tcp_port: int, quic_port: int | None, ca: str, **kw) -> DerpClient:
    kw.setdefault("udp", TC.UDP.WORKS)
    return DerpClient(priv, targets_for_region(region(tcp_port, quic_port)), ca_file=ca, **kw)



class UdpGate(asyncio.DatagramProtocol):
    """A UDP relay between one client and the QUIC listener that counts and can drop everything."""

    def __init__(self, upstream: tuple) -> None:
        self.upstream = upstream
        self.drop = False
        self.arrived = 0
        self.transport = None
        self.client_addr = None
        self.up = None

    @classmethod
    async def start(cls, upstream_port: int) -> "UdpGate":
        loop = asyncio.get_running_loop()
        gate = cls(("127.0.0.1", upstream_port))
        await loop.create_datagram_endpoint(lambda: gate, local_addr=("127.0.0.1", 0))
        gate.up, _ = await loop.create_datagram_endpoint(lambda: _Back(gate), remote_addr=gate.upstream)
        return gate

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.arrived += 1
        self.client_addr = addr
        if not self.drop:
            self.up.sendto(data)

    def back(self, data: bytes) -> None:
        if not self.drop and self.client_addr is not None:
            self.transport.sendto(data, self.client_addr)

    def close(self) -> None:
        self.transport.close()
        self.up.close()


class _Back(asyncio.DatagramProtocol):
    def __init__(self, gate: UdpGate) -> None:
        self.gate = gate

    def datagram_received(self, data: bytes, addr) -> None:
        self.gate.back(data)


class Counter:
    """Numbered packets from one client to another: how many were sent and which arrived."""

    def __init__(self) -> None:
        self.got: set[int] = set()

    def on_packet(self, src: bytes, data: bytes) -> None:
        if data.startswith(b"seq "):
            self.got.add(int(data[4:]))


async def pump(sender: DerpClient, dst: bytes, counter: Counter, stop: asyncio.Event, sent: list) -> None:
    """A packet every 10 ms (counted as sent only when the client accepted it)."""
    n = 0
    while not stop.is_set():
        if sender.send_packet(dst, b"seq %d" % n):
            sent.append(n)
        n += 1
        await asyncio.sleep(0.01)


def test_quic_chosen_when_the_node_has_the_field_and_udp_works(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            (pq, kq), (pt, kt) = new_key(), new_key()
            q = map_client(pq, port, port, pki["ca"])
            t = client(f"https://127.0.0.1:{port}/derp", pt, pki["ca"], transport="upgrade")
            await q.start(timeout=10)
            await t.start(timeout=10)
            try:
                assert q.link == "quic" and q.stats.transport == "quic" and q.stats.quic_fallbacks == 0
                assert server.quic.clients() == 1
                for i in range(5):   # both ways, QUIC datagrams on q's side
                    assert q.send_packet(kt, b"q->t %d" % i)
                    assert (await t.recv_packet(5)).data == b"q->t %d" % i
                    assert t.send_packet(kq, b"t->q %d" % i)
                    assert (await q.recv_packet(5)).data == b"t->q %d" % i
                assert q.send_packets([(kt, b"batch 1"), (kt, b"batch 2")]) == 2
                assert [(await t.recv_packet(5)).data for _ in range(2)] == [b"batch 1", b"batch 2"]
                assert q.stats.extra["quic_datagrams_sent"] == 7
            finally:
                await q.close()
                await t.close()
    run(main())


def test_tcp_when_the_node_has_no_quic_field_and_no_udp_reaches_it(pki) -> None:
    """A plain TLS relay with a UDP socket on its port number counting arrivals: a client whose map has no
    WgcQUICPort never sends UDP there, whatever it knows of UDP (works, or not measured yet)."""
    async def main():
        d = pki["certdir"]
        ctx = load_server_context(os.path.join(d, "127.0.0.1.crt"), os.path.join(d, "127.0.0.1.key"))
        relay = Relay(os.urandom(32), ServerConfig(open_relay=True), AccessList(None), lambda: 0.5)
        server = DerpServer(relay, ServerOptions(conn_rate=0), ctx)
        port = await server.listen("127.0.0.1", 0)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", port))
        udp.setblocking(False)
        clients = []
        try:
            for knows in (TC.UDP.WORKS, TC.UDP.UNKNOWN):
                (pa, ka), (pb, kb) = new_key(), new_key()
                a = map_client(pa, port, None, pki["ca"], udp=knows)
                b = map_client(pb, port, None, pki["ca"], udp=knows)
                clients += [a, b]
                await a.start(timeout=10)
                await b.start(timeout=10)
                assert a.link == b.link == "upgrade"
                assert a.send_packet(kb, b"hello")
                assert (await b.recv_packet(5)).data == b"hello"
            await asyncio.sleep(0.5)   # a background QUIC attempt would have gone out by now
            with pytest.raises(BlockingIOError):
                udp.recv(2048)
            assert all(c.stats.quic_retries == 0 and c.stats.quic_fallbacks == 0 for c in clients)
        finally:
            for c in clients:
                await c.close()
            udp.close()
            await server.shutdown(0)
    run(main())


def test_forced_transport_is_validated() -> None:
    priv, _ = new_key()
    targets = targets_for_region(region(443, None))
    with pytest.raises(UsageError, match="auto, quic, upgrade or websocket"):
        DerpClient(priv, targets, transport="udp")
    with pytest.raises(UsageError, match="WgcQUICPort"):
        DerpClient(priv, targets, transport="quic")


def test_quic_refused_or_blackholed_falls_back_to_tcp_in_bounded_time(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            closed.bind(("127.0.0.1", 0))
            nobody = closed.getsockname()[1]
            closed.close()                       # nothing listens there: port unreachable
            gate = await UdpGate.start(port)
            gate.drop = True                     # datagrams vanish
            loop = asyncio.get_running_loop()
            try:
                for quic_port in (nobody, gate.port):
                    priv, _ = new_key()
                    c = map_client(priv, port, quic_port, pki["ca"])
                    began = loop.time()
                    try:
                        await c.start(timeout=20)
                        took = loop.time() - began
                        assert c.link == "upgrade" and c.stats.quic_fallbacks == 1
                        # QUIC's own dial bound (not the 10 s connect timeout) is what was waited for
                        assert took < c.connect_timeout + TC.ChoiceConfig().connect_timeout, took
                    finally:
                        await c.close()
                assert gate.arrived > 0          # the blackholed dial did try
            finally:
                gate.close()
    run(main())


def test_quic_stall_falls_back_to_tcp_and_quic_is_used_again_without_a_restart(pki) -> None:
    async def main():
        async with quic_relay(pki) as (server, port):
            gate = await UdpGate.start(port)
            (pq, kq), (pt, kt) = new_key(), new_key()
            events: list = []
            to_t, to_q = Counter(), Counter()
            q = map_client(pq, port, gate.port, pki["ca"], choice=FAST, on_packet=to_q.on_packet, preferred=True,
                           on_event=lambda ev: events.append((ev, q.link)))
            t = DerpClient(pt, targets_for_region(region(port, None)), ca_file=pki["ca"],
                           on_packet=to_t.on_packet, on_event=lambda ev: None)
            stop = asyncio.Event()
            sent_q: list[int] = []
            sent_t: list[int] = []
            try:
                await q.start(timeout=10)
                await t.start(timeout=10)
                assert q.link == "quic" and [(type(e), link) for e, link in events] == [(Connected, "quic")]
                pumps = [asyncio.create_task(pump(q, kt, to_t, stop, sent_q)),
                         asyncio.create_task(pump(t, kq, to_q, stop, sent_t))]
                await until(lambda: len(to_t.got) > 20 and len(to_q.got) > 20, 15, "packets over QUIC")

                gate.drop = True                 # UDP to the relay now vanishes mid-session
                await until(lambda: q.link == "upgrade", 20, "fallback to TCP after the stall")
                assert q.stats.quic_stalls == 1 and q.stats.quic_fallbacks == 1
                # TCP took over at once: a change of transport, never an outage of the relay
                assert not any(isinstance(e, (Disconnected, Connected)) for e, _ in events[1:]), events
                assert any(isinstance(e, TransportChanged) and (e.transport, e.previous) == ("upgrade", "quic")
                           and "stalled" in e.reason for e, _ in events)
                mark_t, mark_q = len(to_t.got), len(to_q.got)
                await until(lambda: len(to_t.got) > mark_t + 20 and len(to_q.got) > mark_q + 20, 15,
                            "packets over TCP after the fallback")

                gate.drop = False                # QUIC works again: the background retry takes over
                await until(lambda: q.link == "quic", 30, "QUIC used again")
                assert q.stats.quic_swaps == 1 and q.stats.quic_retries >= 1
                assert any(isinstance(e, TransportChanged) and e.transport == "quic" and e.previous == "upgrade"
                           for e, _ in events)
                assert [type(e) for e, _ in events].count(Connected) == 1   # neither move was a reconnect
                assert not any(isinstance(e, Disconnected) for e, _ in events)
                # the relay delivers to the QUIC link, our home. Not at the instant q.link changes: until
                # the old TCP link is gone the relay has two links for the key, and the one that sent
                # last is the active one (Tailscale's duplicate-client rule); NotePreferred went out on
                # the QUIC link as it took over and takes effect when it arrives
                def quic_is_home() -> bool:
                    active = server.relay.active(kq)
                    return active is not None and active.sink.is_quic and active.preferred
                await until(quic_is_home, 5, "the relay delivers to the QUIC link, marked preferred")
                swapped_at_t, swapped_at_q = len(sent_q), len(sent_t)
                await until(lambda: len(sent_q) > swapped_at_t + 50 and len(sent_t) > swapped_at_q + 50, 15,
                            "packets sent after the swap")
                stop.set()
                await asyncio.gather(*pumps)
                await asyncio.sleep(0.5)         # the last ones in flight
                # every packet sent from the swap on arrived: make-before-break lost none on loopback
                assert set(sent_q[swapped_at_t:]) <= to_t.got
                assert set(sent_t[swapped_at_q:]) <= to_q.got
                assert q.stats.connects == 3     # QUIC, TCP, QUIC: the client was never restarted
                assert server.quic.clients() >= 1
            finally:
                stop.set()
                await q.close()
                await t.close()
                gate.close()
    run(main())
