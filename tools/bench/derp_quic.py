"""DERP over QUIC in `python3 -m tools.bench derp --quic`: QUIC clients (derp.aio.quic_client) beside the
TCP ones of tools/bench/derp.py, on the same TLS relay in the same run.

* throughput: one sender process sends packets to a receiver process through the relay, both over QUIC
  (DATAGRAM frames), at paced rates (datagrams have no flow control: a flood measures only how the relay
  drops) and unpaced; then QUIC and TCP pairs at once (each kind's share reported);
* the relay's CPU time per relayed packet (utime + stime of the derper process over the run / packets);
* latency: ping-pong of 1,400-byte packets between two QUIC clients, idle; "added" as in derp.py.
Each process runs its own asyncio loop (uvloop when installed); traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time

from derp.keys import private_key_from_random, public_key_of

PKT = 1400


def _loop_policy() -> None:
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


async def quic_conn(port: int, ca: str, priv: bytes, on_packet):
    """A DerpClient whose connection is one QUIC connection to 127.0.0.1:port (returns client, conn)."""
    from derp.aio.client import DerpClient, targets_for_url
    from derp.aio.quic_client import dial_quic
    c = DerpClient(priv, targets_for_url(f"https://127.0.0.1:{port}/derp"), ca_file=ca, reconnect=False,
                   on_packet=on_packet, on_event=lambda ev: None)
    conn = await asyncio.wait_for(dial_quic(c, c.targets[0], port), 10)
    c.stream = conn
    return c, conn


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _receiver(conn, port, ca, priv, seconds):
    _loop_policy()

    async def main():
        state = {"n": 0, "first": 0.0, "last": 0.0}

        def on_packet(src, data):
            now = time.monotonic()
            if not state["n"]:
                state["first"] = now
            state["n"] += 1
            state["last"] = now
        c, qc = await quic_conn(port, ca, priv, on_packet)
        conn.send(1)
        end = time.monotonic() + seconds + 20
        while time.monotonic() < end:
            await asyncio.sleep(0.2)
            if state["n"] and time.monotonic() - state["last"] > 1.5:
                break
        conn.send((state["n"], max(1e-6, state["last"] - state["first"])))
        qc._finish("done")
    asyncio.run(main())


def _sender(conn, port, ca, priv, dst, seconds, rate):
    """Packets to `dst` for `seconds`: `rate` a second, paced every millisecond (0: as fast as accepted)."""
    _loop_policy()

    async def main():
        c, qc = await quic_conn(port, ca, priv, lambda s, d: None)
        frame = qc.core.send_packet(dst, os.urandom(PKT))
        start = time.monotonic()
        end = start + seconds
        sent = 0
        while (now := time.monotonic()) < end:
            due = int(rate * (now - start)) if rate else sent + 32
            while sent < due:
                if not qc.write_packet(frame):
                    break
                sent += 1
            await asyncio.sleep(0.001 if rate else 0)
        await asyncio.sleep(0.3)
        conn.send(sent)
        qc._finish("done")
    asyncio.run(main())


def start_stream(port: int, ca: str, seconds: float, rate: int = 0):
    """Start a QUIC sender/receiver pair (`rate` packets/s, 0: flood); returns a function that waits and
    gives (Mbit/s, packets/s received, share of the sent packets lost)."""
    ka, kb = private_key_from_random(os.urandom(32)), private_key_from_random(os.urandom(32))
    parent, child = mp.Pipe()
    rx = mp.Process(target=_receiver, args=(child, port, ca, kb, seconds))
    rx.start()
    parent.recv()
    sent_parent, sent_child = mp.Pipe()
    tx = mp.Process(target=_sender, args=(sent_child, port, ca, ka, public_key_of(kb), seconds, rate))
    tx.start()

    def result() -> tuple[float, float, float]:
        sent = sent_parent.recv()
        tx.join(seconds + 30)
        n, elapsed = parent.recv()
        rx.join(10)
        return n * PKT * 8 / elapsed / 1e6, n / elapsed, 1 - n / max(1, sent)
    return result


def _echo(port, ca, priv, ready):
    _loop_policy()

    async def main():
        box = {}

        def on_packet(src, data):
            qc = box["qc"]
            qc.write_packet(qc.core.send_packet(src, data))
        c, box["qc"] = await quic_conn(port, ca, priv, on_packet)
        ready.send(1)
        await asyncio.sleep(3600)
    asyncio.run(main())


def pingpong(port: int, ca: str, count: int) -> list[float]:
    """Round-trip times (µs) of 1,400-byte packets between two QUIC clients through the relay."""
    _loop_policy()
    kb = private_key_from_random(os.urandom(32))
    parent, child = mp.Pipe()
    echo = mp.Process(target=_echo, args=(port, ca, kb, child), daemon=True)
    echo.start()
    parent.recv()

    async def main() -> list[float]:
        got: asyncio.Queue = asyncio.Queue()
        c, qc = await quic_conn(port, ca, private_key_from_random(os.urandom(32)), lambda s, d: got.put_nowait(d))
        frame = qc.core.send_packet(public_key_of(kb), os.urandom(PKT))
        rtts = []
        for i in range(count + 50):
            t0 = time.perf_counter()
            qc.write_packet(frame)
            await asyncio.wait_for(got.get(), 5)
            if i >= 50:
                rtts.append((time.perf_counter() - t0) * 1e6)
        qc._finish("done")
        return rtts
    try:
        return asyncio.run(main())
    finally:
        echo.kill()
