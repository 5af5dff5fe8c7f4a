"""The NAT lab's WebSocket-only proxy switched at run time (tools/natlab/wsproxy.py --mode/--mode-file),
on loopback: in mode `pass` an `Upgrade: DERP` request reaches the upstream; switched to `refuse-derp`
(SIGHUP) the passed DERP connection is closed, a new one is refused with 426, a WebSocket upgrade still
passes; switched back, DERP passes again. A bad mode file changes nothing."""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.derp.derp_support import free_port

pytestmark = pytest.mark.timeout(30)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _upstream() -> tuple[socket.socket, list[bytes]]:
    """A TCP server that records each request head and answers `ok <upgrade>` (then keeps the socket)."""
    srv = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            heads.append(head)
            conn.sendall(b"ok " + head.split(b"Upgrade: ")[1].split(b"\r\n")[0])
            held.append(conn)
    threading.Thread(target=serve, daemon=True).start()
    return srv, heads


def _line(proc: subprocess.Popen) -> str:
    assert select.select([proc.stdout], [], [], 10)[0], "the proxy printed nothing"
    return proc.stdout.readline().strip()


def _request(port: int, upgrade: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n\r\n".encode())
    return sock, sock.recv(4096)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_mode_switch_at_run_time(tmp_path) -> None:
    srv, heads = _upstream()
    mode_file = tmp_path / "mode"
    mode_file.write_text("pass\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tools.natlab.wsproxy", "--listen", f"127.0.0.1:{port}",
                             "--upstream", f"127.0.0.1:{srv.getsockname()[1]}", "--plain", "--mode", "pass",
                             "--mode-file", str(mode_file)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _line(proc).startswith("wsproxy ready")
        derp, answer = _request(port, "DERP")
        assert answer == b"ok DERP" and b"X-Forwarded-For: 127.0.0.1" in heads[-1]
        ws, answer = _request(port, "websocket")
        assert answer == b"ok websocket"
        mode_file.write_text("refuse-derp\n")
        proc.send_signal(signal.SIGHUP)
        assert _line(proc) == "wsproxy mode refuse-derp closed=1"
        assert _closed(derp), "the DERP connection passed before the switch must be closed"
        ws.sendall(b"still open")
        refused, answer = _request(port, "DERP")
        assert answer.startswith(b"HTTP/1.1 426 Upgrade Required") and _closed(refused)
        assert _request(port, "websocket")[1] == b"ok websocket"
        mode_file.write_text("open sesame\n")
        proc.send_signal(signal.SIGHUP)
        assert _request(port, "DERP")[1].startswith(b"HTTP/1.1 426"), "a bad mode file changes nothing"
        mode_file.write_text("pass")
        proc.send_signal(signal.SIGHUP)
        assert _line(proc) == "wsproxy mode pass closed=0"
        assert _request(port, "DERP")[1] == b"ok DERP"
        proc.send_signal(signal.SIGUSR1)
        assert _line(proc) == "wsproxy refused=2 passed=4 bad=0"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        srv.close()
    assert "expected one of refuse-derp, pass" in err and "Traceback" not in err, err
