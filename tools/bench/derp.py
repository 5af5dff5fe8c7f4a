"""DERP relay benchmark (`python3 -m tools.bench derp`): throughput, added latency and idle capacity of
`wgc derper`, each against a reference measured in the same run on loopback.

* throughput: a sender process streams 1,400-byte packets as SendPacket frames to a receiver through the
  relay (TLS and plain HTTP); reference: the same byte stream over a direct loopback TCP connection.
* latency: ping-pong of 1,400-byte packets between two clients through the relay, at idle and under a
  moderate background stream; reference: the same ping-pong over direct loopback TCP. "Added" = relayed -
  direct, per percentile.
* idle capacity: the relay's RSS with N connected idle clients (default 10,000), TLS and plain.
* with --quic: QUIC clients (DERP over QUIC, DATAGRAM frames) beside TCP ones on one TLS relay: throughput
  of each alone and of both at once, the relay's CPU time per relayed packet, round trips of each kind
  (tools/bench/derp_quic.py).
* with --compare-acme: TLS throughput and round trip with a manual certificate beside one the relay got
  from pebble over ACME (tools/bench/derp_acme.py; needs root and Debian's pebble).
Traffic stays on 127.0.0.1 (with --compare-acme: on the loopback of a namespace the bench makes).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import socket
import ssl
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from derp import protocol as P
from derp.aio.certs import make_ca, make_cert, write_pair
from derp.constants import FrameType
from derp.keys import private_key_from_random, public_key_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKT = 1400
HDR = struct.Struct(">BI")


# ---- plumbing ----------------------------------------------------------------------------------------------

def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Derper:
    def __init__(self, tls: bool, pki: dict[str, str], extra: list[str] | None = None) -> None:
        argv = [sys.executable, "-m", "derp", "-a", "127.0.0.1:0", "--no-stun", "--open-relay", "--conn-rate", "0",
                "--max-conns-per-ip", "0",
                "--metrics-addr", "off", "--shutdown-timeout", "1", "--http-port", "-1"]
        argv += (["--certmode", "manual", "--hostname", "127.0.0.1", "--certdir", pki["certdir"]] if tls
                 else ["--certmode", "none"])
        self.proc = subprocess.Popen(argv + (extra or []), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                                     preexec_fn=raise_nofile)
        line = self.proc.stdout.readline()
        if not line.startswith("derper ready"):
            raise SystemExit(f"derper did not start: {line!r}")
        self.port = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
        self.tls = tls
        self.ca = pki["ca"]

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_pki(tmp: str) -> dict[str, str]:
    ca = make_ca()
    with open(os.path.join(tmp, "ca.pem"), "wb") as fh:
        fh.write(ca.cert_pem)
    write_pair(make_cert(["127.0.0.1"], ca), os.path.join(tmp, "127.0.0.1.crt"), os.path.join(tmp, "127.0.0.1.key"))
    return {"ca": os.path.join(tmp, "ca.pem"), "certdir": tmp}


_CTX: dict[str, ssl.SSLContext] = {}


def derp_socket(port: int, tls: bool, ca: str, priv: bytes, sni: str = "127.0.0.1") -> socket.socket:
    """A blocking socket to 127.0.0.1:port that finished the DERP handshake (ServerInfo received); over TLS
    the served chain is verified against `ca` for the name `sni`, which is also the HTTP Host."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        ctx = _CTX.get(ca)
        if ctx is None:
            ctx = _CTX[ca] = ssl.create_default_context(cafile=ca)
            ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname=sni)
    sock.sendall(f"GET /derp HTTP/1.1\r\nHost: {sni}\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    core = P.ClientConnection(priv, os.urandom, 0.0)
    data = rest
    while core.state != P.ClientState.CONNECTED:
        for out in core.receive_data(data, 0.0):
            if isinstance(out, P.Transmit):
                sock.sendall(out.data)
        if core.state != P.ClientState.CONNECTED:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during handshake")
    return sock


# ---- throughput ------------------------------------------------------------------------------------------

def _receiver(conn, mode, port, tls, ca, priv, seconds, sni):
    if mode == "direct":  # reference: accept the sender's connection ourselves
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        conn.send(lsock.getsockname()[1])
        sock, _ = lsock.accept()
    elif mode == "pipe":
        sock = socket.create_connection(("127.0.0.1", port))
        conn.send(port)
    else:
        sock = derp_socket(port, tls, ca, priv, sni)
        conn.send(port)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    sock.settimeout(2.0)
    start = last = None
    end = time.monotonic() + seconds + 30
    try:
        while time.monotonic() < end:
            n = sock.recv_into(view)
            if not n:
                break
            if start is None:
                start = time.monotonic()
            total += n
            last = time.monotonic()
    except (socket.timeout, OSError):
        pass
    conn.send((total, (last - start) if start and last else 1.0))


def _sender(mode, port, tls, ca, priv, dst, seconds, sni):
    if mode in ("direct", "pipe"):
        sock = socket.create_connection(("127.0.0.1", port))
    else:
        sock = derp_socket(port, tls, ca, priv, sni)
    payload = os.urandom(PKT)
    frame = HDR.pack(FrameType.SEND_PACKET, 32 + PKT) + dst + payload
    batch = frame * 32
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.sendall(batch)
    sock.close()


def _pipe_server(ready):
    """Reference relay without DERP: an asyncio (uvloop) byte pipe from the 2nd connection to the 1st."""
    import asyncio
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    class Pipe(asyncio.Protocol):
        conns: list = []

        def connection_made(self, transport):
            self.transport = transport
            Pipe.conns.append(transport)

        def data_received(self, data):
            if Pipe.conns and Pipe.conns[0] is not self.transport:
                Pipe.conns[0].write(data)

    async def main():
        srv = await asyncio.get_running_loop().create_server(Pipe, "127.0.0.1", 0)
        ready.send(srv.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    asyncio.run(main())


def throughput(mode: str, port: int, tls: bool, ca: str, seconds: float,
               sni: str = "127.0.0.1") -> tuple[float, float]:
    """(Mbit/s of packet payload, packets/s) received from one sender streaming 1,400-byte packets."""
    ka, kb = private_key_from_random(os.urandom(32)), private_key_from_random(os.urandom(32))
    frame_len = 5 + 32 + PKT
    parent, child = mp.Pipe()
    rx = mp.Process(target=_receiver, args=(child, mode, port, tls, ca, kb, seconds, sni))
    rx.start()
    port = parent.recv()
    time.sleep(0.2)
    tx = mp.Process(target=_sender, args=(mode, port, tls, ca, ka, public_key_of(kb), seconds, sni))
    tx.start()
    tx.join(seconds + 30)
    total, elapsed = parent.recv()
    rx.join(10)
    packets = total / frame_len
    return packets * PKT * 8 / elapsed / 1e6, packets / elapsed


# ---- latency ---------------------------------------------------------------------------------------------

def _echo(port, tls, ca, priv, ready, sni="127.0.0.1"):
    sock = derp_socket(port, tls, ca, priv, sni)
    ready.send(1)
    buf = b""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        buf += data
        while len(buf) >= 5:
            ftype, length = HDR.unpack_from(buf)
            if len(buf) < 5 + length:
                break
            payload, buf = buf[5:5 + length], buf[5 + length:]
            if ftype == FrameType.RECV_PACKET:
                src, body = payload[:32], payload[32:]
                sock.sendall(HDR.pack(FrameType.SEND_PACKET, len(payload)) + src + body)


def _direct_echo(ready):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    ready.send(lsock.getsockname()[1])
    sock, _ = lsock.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def _read_frame(sock, buf: bytearray) -> bytes:
    while True:
        if len(buf) >= 5:
            ftype, length = HDR.unpack_from(buf)
            if len(buf) >= 5 + length:
                payload = bytes(buf[5:5 + length])
                del buf[:5 + length]
                if ftype in (FrameType.RECV_PACKET, FrameType.SEND_PACKET):
                    return payload
                continue
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("closed")
        buf += data


def pingpong(port: int | None, tls: bool, ca: str, count: int, sni: str = "127.0.0.1") -> list[float]:
    """Round-trip times (µs) of 1,400-byte packets: through the relay, or direct when port is None."""
    parent, child = mp.Pipe()
    kb = private_key_from_random(os.urandom(32))
    if port is None:
        echo = mp.Process(target=_direct_echo, args=(child,), daemon=True)
        echo.start()
        sock = socket.create_connection(("127.0.0.1", parent.recv()))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        echo = mp.Process(target=_echo, args=(port, tls, ca, kb, child, sni), daemon=True)
        echo.start()
        parent.recv()
        sock = derp_socket(port, tls, ca, private_key_from_random(os.urandom(32)), sni)
    frame = HDR.pack(FrameType.SEND_PACKET, 32 + PKT) + public_key_of(kb) + os.urandom(PKT)
    buf = bytearray()
    rtts = []
    for i in range(count + 50):
        t0 = time.perf_counter()
        sock.sendall(frame)
        _read_frame(sock, buf)
        if i >= 50:
            rtts.append((time.perf_counter() - t0) * 1e6)
    sock.close()
    echo.kill()
    return rtts


def _background(port, tls, ca, pps, seconds, stop_event):
    """A moderate background stream: pps packets/s from one client to another through the relay."""
    ka, kb = private_key_from_random(os.urandom(32)), private_key_from_random(os.urandom(32))
    rx = derp_socket(port, tls, ca, kb)
    tx = derp_socket(port, tls, ca, ka)
    threading.Thread(target=lambda: [rx.recv(1 << 20) for _ in iter(int, 1)], daemon=True).start()
    frame = HDR.pack(FrameType.SEND_PACKET, 32 + PKT) + public_key_of(kb) + os.urandom(PKT)
    batch = frame * 10
    interval = 10 / pps
    nxt = time.monotonic()
    while not stop_event.is_set():
        tx.sendall(batch)
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


# ---- idle capacity ---------------------------------------------------------------------------------------

def idle_clients(port: int, tls: bool, ca: str, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        socks.append(derp_socket(port, tls, ca, private_key_from_random(os.urandom(32))))
    return socks


# ---- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench derp", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    ap.add_argument("--pings", type=int, default=2000, help="round trips per latency run")
    ap.add_argument("--idle-clients", type=int, default=10000)
    ap.add_argument("--background-pps", type=int, default=5000, help="moderate load during the latency run")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: throughput,latency,idle")
    ap.add_argument("--compare-acme", action="store_true",
                    help="also compare TLS with a manual and with an ACME (pebble) certificate; needs root")
    ap.add_argument("--quic", action="store_true",
                    help="also run DERP-over-QUIC clients beside TCP ones on one TLS relay")
    ap.add_argument("--quic-packet", type=int, default=1312,
                    help="packet size of the --quic part, both kinds (default: a WireGuard packet of MTU 1280, "
                         "which a QUIC datagram holds)")
    ap.add_argument("--quic-rates", default="2000,5000,10000,0",
                    help="comma list of paced QUIC sender rates in packets/s for --quic (0: unpaced flood)")
    ap.add_argument("--acme-rounds", type=int, default=3, help="alternated rounds per certificate kind")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if args.acme_rounds < 1:
        ap.error("--acme-rounds is at least 1")
    if args.compare_acme:
        from tools.bench import derp_acme
        problem = derp_acme.missing_prerequisites()
        if problem:
            print(f"tools.bench derp: {problem}", file=sys.stderr)
            return 2
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="derp-bench-")
    try:
        return _run(args, skip, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, skip: set[str], tmp: str) -> int:
    pki = make_pki(tmp)
    print(f"DERP relay benchmark: {PKT}-byte packets, loopback, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if "throughput" not in skip:
        ref_mbps, ref_pps = throughput("direct", 0, False, pki["ca"], args.seconds)
        print(f"reference: direct TCP stream             {ref_mbps:7.0f} Mbit/s {ref_pps:9.0f} packets/s")
        parent, child = mp.Pipe()
        pipe = mp.Process(target=_pipe_server, args=(child,), daemon=True)
        pipe.start()
        pipe_mbps, pipe_pps = throughput("pipe", parent.recv(), False, pki["ca"], args.seconds)
        pipe.kill()
        print(f"reference: asyncio byte pipe (no DERP)    {pipe_mbps:7.0f} Mbit/s {pipe_pps:9.0f} packets/s")
        for tls in (False, True):
            srv = Derper(tls, pki)
            try:
                mbps, pps = throughput("derp", srv.port, tls, pki["ca"], args.seconds)
            finally:
                srv.stop()
            name = "TLS" if tls else "plain HTTP"
            print(f"relayed over {name:<11}                 {mbps:7.0f} Mbit/s {pps:9.0f} packets/s "
                  f"({mbps / ref_mbps:.2f} of direct, {mbps / pipe_mbps:.2f} of the byte pipe)")
    if "latency" not in skip:
        direct = pingpong(None, False, pki["ca"], args.pings)
        print(f"reference: direct ping-pong RTT     p50 {pct(direct, 50):7.0f} µs  p99 {pct(direct, 99):7.0f} µs")
        srv = Derper(True, pki)
        try:
            idle = pingpong(srv.port, True, pki["ca"], args.pings)
            stop = mp.Event()
            bg = mp.Process(target=_background, args=(srv.port, True, pki["ca"], args.background_pps, 0, stop),
                            daemon=True)
            bg.start()
            time.sleep(0.5)
            loaded = pingpong(srv.port, True, pki["ca"], args.pings)
            stop.set()
            bg.join(3)
            if bg.is_alive():
                bg.kill()
        finally:
            srv.stop()
        for label, rtts in (("idle", idle), (f"{args.background_pps} pkt/s load", loaded)):
            print(f"relayed RTT (TLS, {label:<15})  p50 {pct(rtts, 50):7.0f} µs  p99 {pct(rtts, 99):7.0f} µs; "
                  f"added by the relay p50 {pct(rtts, 50) - pct(direct, 50):6.0f} µs "
                  f"p99 {pct(rtts, 99) - pct(direct, 99):6.0f} µs")
    if "idle" not in skip:
        for tls in (False, True):
            srv = Derper(tls, pki)
            try:
                time.sleep(0.3)
                base = srv.rss_mib()
                t0 = time.monotonic()
                socks = idle_clients(srv.port, tls, pki["ca"], args.idle_clients)
                took = time.monotonic() - t0
                time.sleep(1.0)
                rss = srv.rss_mib()
                name = "TLS" if tls else "plain HTTP"
                print(f"idle {name:<10}: {len(socks)} clients connected in {took:.1f} s; relay RSS {rss:.0f} MiB "
                      f"(empty {base:.0f} MiB, {(rss - base) * 1024 / max(1, len(socks)):.1f} KiB a client)")
                for s in socks:
                    s.close()
            finally:
                srv.stop()
    if args.quic:
        quic_vs_tcp(pki, args)
    if args.compare_acme:
        from tools.bench import derp_acme
        try:
            derp_acme.compare(tmp, pki, args.seconds, args.pings, args.acme_rounds)
        except (RuntimeError, TimeoutError) as exc:   # pebble or the ACME relay did not come up
            print(f"tools.bench derp: --compare-acme: {exc}", file=sys.stderr)
            return 1
    return 0


def quic_vs_tcp(pki: dict[str, str], args: argparse.Namespace) -> None:
    """QUIC and TCP clients on one TLS relay, same run (tools/bench/derp_quic.py)."""
    global PKT
    from tools.bench import derp_quic as Q
    PKT = Q.PKT = args.quic_packet
    print(f"QUIC beside TCP on one TLS relay, {PKT}-byte packets:")
    srv = Derper(True, pki)
    try:
        rates = [int(r) for r in args.quic_rates.split(",") if r.strip()]
        for kind, rate in [("TCP", 0)] + [("QUIC", r) for r in rates]:
            cpu0 = Q.cpu_seconds(srv.proc.pid)
            loss = 0.0
            if kind == "TCP":
                mbps, pps = throughput("derp", srv.port, True, pki["ca"], args.seconds)
            else:
                mbps, pps, loss = Q.start_stream(srv.port, pki["ca"], args.seconds, rate)()
            cpu = Q.cpu_seconds(srv.proc.pid) - cpu0
            packets = pps * args.seconds
            offered = f"{rate} pkt/s offered" if rate else ("stream" if kind == "TCP" else "flood")
            print(f"relayed over {kind:<4} ({offered:<18}) {mbps:7.0f} Mbit/s {pps:9.0f} packets/s "
                  f"{loss * 100:5.1f} % lost; relay CPU {cpu * 1e6 / max(1.0, packets):5.1f} µs a packet")
        quic_result = Q.start_stream(srv.port, pki["ca"], args.seconds, rates[0] if rates else 0)
        tcp_mbps, tcp_pps = throughput("derp", srv.port, True, pki["ca"], args.seconds)
        quic_mbps, quic_pps, quic_loss = quic_result()
        print(f"both at once: TCP {tcp_mbps:7.0f} Mbit/s {tcp_pps:8.0f} packets/s, QUIC {quic_mbps:7.0f} Mbit/s "
              f"{quic_pps:8.0f} packets/s ({quic_loss * 100:.1f} % lost)")
        direct = pingpong(None, False, pki["ca"], args.pings)
        tcp = pingpong(srv.port, True, pki["ca"], args.pings)
        quic = Q.pingpong(srv.port, pki["ca"], args.pings)
        print(f"reference: direct ping-pong RTT     p50 {pct(direct, 50):7.0f} µs  p99 {pct(direct, 99):7.0f} µs")
        for kind, rtts in (("TCP", tcp), ("QUIC", quic)):
            print(f"relayed RTT ({kind:<4}, idle)           p50 {pct(rtts, 50):7.0f} µs  p99 {pct(rtts, 99):7.0f} µs; "
                  f"added by the relay p50 {pct(rtts, 50) - pct(direct, 50):6.0f} µs "
                  f"p99 {pct(rtts, 99) - pct(direct, 99):6.0f} µs")
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
