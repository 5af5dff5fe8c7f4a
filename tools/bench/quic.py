"""DERP-over-QUIC datagram benchmark (`python3 -m tools.bench quic`): an in-memory aioquic client/server
pair (tests/derp/quiccc_pair.py, virtual time, no sockets) over an emulated link.

1. Goodput: the client keeps DATAGRAM frames of --size bytes queued (derp.aio.quiccc.DatagramSender)
   towards the server through a bottleneck of --rate Mbit/s with a drop-tail buffer of --buffer BDP,
   --delay ms each way and seeded random loss in both directions (upstream of the bottleneck), at 0 %,
   1 % and 3 %, once per controller: aioquic's default (reno), cubic and ours (wgc-tunnel), with the count
   of packets the bottleneck buffer dropped. Virtual time, so the figures do not depend on the CPU.
2. CPU: wall-clock microseconds per datagram for aioquic to send and receive --size-byte datagrams
   (client datagrams_to_send, server receive_datagram + events, the ACKs back), with pacing on/off, the
   qlog QuicLogger on/off, and 1 vs 32 datagrams queued per datagrams_to_send call; the best of --repeat
   runs (other load on the machine only adds time); "lean send path" is derp.aio.quicfast's connection
   class at both ends, as the relay and the client run it.
Not part of the test suite.
"""
from __future__ import annotations

import argparse
import time

from aioquic.quic.logger import QuicLogger

from derp.aio.quicfast import connection_class
from derp.aio.quiccc import ALGORITHM, DatagramSender
from tests.derp.quiccc_pair import CLIENT_ADDR, SERVER_ADDR, Link, QuicPair

CONTROLLERS = ("reno", "cubic", ALGORITHM)
LOSSES = (0.0, 0.01, 0.03)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench quic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=50.0, help="bottleneck Mbit/s (default 50)")
    ap.add_argument("--delay", type=float, default=20.0, help="one-way delay in ms (default 20)")
    ap.add_argument("--buffer", type=float, default=1.0, help="bottleneck buffer in BDPs (default 1)")
    ap.add_argument("--time", type=float, default=6.0, help="virtual seconds per goodput run (default 6)")
    ap.add_argument("--size", type=int, default=1300, help="datagram payload bytes (default 1300)")
    ap.add_argument("--count", type=int, default=20000, help="datagrams per CPU run (default 20000)")
    ap.add_argument("--repeat", type=int, default=3, help="CPU runs per variant, the best shown (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args(argv)
    if not (0.1 <= opts.rate <= 1000 and 0 <= opts.delay <= 500 and 0.05 <= opts.buffer <= 100 and 1 <= opts.time <= 120
            and 16 <= opts.size <= 1400 and 100 <= opts.count <= 10**6 and 1 <= opts.repeat <= 20):
        ap.error("--rate 0.1-1000, --delay 0-500, --buffer 0.05-100, --time 1-120, --size 16-1400, --count 100-1000000, "
                 "--repeat 1-20")
    return opts


def goodput(algorithm: str, loss: float, opts) -> tuple[float, int]:
    """Mbit/s of datagram payload the server received after the first second, and the packets the
    bottleneck's buffer dropped in that time."""
    rate = opts.rate * 1e6 / 8
    delay = opts.delay / 1000
    bdp = rate * 2 * delay
    up = Link(delay=delay, loss=loss, seed=opts.seed, rate=rate, buffer=int(max(opts.buffer * bdp, 4 * 1500)))
    p = QuicPair(up, Link(delay=delay, loss=loss, seed=opts.seed + 1), algorithm=algorithm)
    p.handshake()
    sender = DatagramSender(p.client)
    payload = bytes(opts.size)

    def source(now):
        while len(sender.pending) < 64:
            sender.send(payload)

    p.run(p.now + 1.0, source)
    start, count, overflowed = p.now, len(p.received), up.overflowed
    p.run(start + opts.time, source)
    return (len(p.received) - count) * opts.size * 8 / (p.now - start) / 1e6, up.overflowed - overflowed


def cpu_cost(opts, *, batch: int, pacing: bool = True, qlog: bool = False,
             lean: bool = False) -> tuple[float, float, float]:
    """µs per datagram: (client send, server receive, ACKs back), wall clock. `lean`: both ends are
    derp.aio.quicfast's connection class (what the relay and client use) instead of aioquic's."""
    p = QuicPair(Link(delay=0.001), Link(delay=0.001), quic_logger=QuicLogger() if qlog else None,
                 connection_class=connection_class if lean else None)
    p.handshake()
    client, server = p.client, p.server
    if not pacing:
        for conn in (client, server):
            conn._loss._pacer.update_rate = lambda **kw: None
            conn._loss._pacer.packet_time = None
    sender = DatagramSender(client, limit=1 << 20)
    payload = bytes(opts.size)
    now = p.now
    t_send = t_recv = t_ack = 0.0
    got = 0
    clock = time.perf_counter
    while got < opts.count:
        t0 = clock()
        for _ in range(batch):
            sender.send(payload)
        out = client.datagrams_to_send(now)
        t1 = clock()
        for data, _ in out:
            server.receive_datagram(data, CLIENT_ADDR, now)
        event = server.next_event()
        while event is not None:
            got += 1
            event = server.next_event()
        t2 = clock()
        now += batch * 2e-5                        # virtual time: 20 µs per datagram (about 500 Mbit/s)
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, SERVER_ADDR, now)
        for conn in (client, server):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
        while client.next_event() is not None:
            pass
        t3 = clock()
        t_send, t_recv, t_ack = t_send + t1 - t0, t_recv + t2 - t1, t_ack + t3 - t2
    scale = 1e6 / got
    return t_send * scale, t_recv * scale, t_ack * scale


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    print(f"goodput, Mbit/s of {opts.size}-byte datagrams (packets the buffer dropped): bottleneck "
          f"{opts.rate:g} Mbit/s, {opts.delay:g} ms each way, buffer {opts.buffer:g} BDP, loss both ways, "
          f"{opts.time:g} virtual s")
    print(f"{'loss':>6} " + " ".join(f"{name:>15}" for name in CONTROLLERS) + f" {'ours/reno':>10} {'ours/cubic':>10}")
    for loss in LOSSES:
        figures = [goodput(name, loss, opts) for name in CONTROLLERS]
        rates = [f for f, _ in figures]
        print(f"{loss * 100:>5g}% " + " ".join(f"{f:>8.1f} ({d:>4})" for f, d in figures)
              + f" {rates[2] / max(rates[0], 1e-9):>9.1f}x {rates[2] / max(rates[1], 1e-9):>9.1f}x")
    print(f"\naioquic CPU, µs per {opts.size}-byte datagram (wall clock, {opts.count} datagrams, "
          f"best of {opts.repeat})")
    print(f"{'variant':<34} {'send':>7} {'receive':>8} {'acks':>7} {'total':>7}")
    for label, kw in (("pacing, no qlog, 1 per call", dict(batch=1)),
                      ("pacing, no qlog, 32 per call", dict(batch=32)),
                      ("lean send path, 1 per call", dict(batch=1, lean=True)),
                      ("lean send path, 32 per call", dict(batch=32, lean=True)),
                      ("no pacing, no qlog, 32 per call", dict(batch=32, pacing=False)),
                      ("no pacing, no qlog, 1 per call", dict(batch=1, pacing=False)),
                      ("pacing, qlog, 32 per call", dict(batch=32, qlog=True))):
        send, recv, ack = min((cpu_cost(opts, **kw) for _ in range(opts.repeat)), key=sum)
        print(f"{label:<34} {send:>7.1f} {recv:>8.1f} {ack:>7.1f} {send + recv + ack:>7.1f}")
    return 0
