"""`wgc netcheck` on loopback only (no namespaces): output formats, the history file, user mistakes."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import pytest

from natprobe.aio.server import start_stun_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def stun_port():
    ready, stop, box = threading.Event(), None, {}

    def serve():
        async def main():
            server = await start_stun_server("127.0.0.1", 0)
            box["port"], box["stop"] = server.port, asyncio.Event()
            ready.set()
            await box["stop"].wait()
            server.close()
        box["loop"] = asyncio.new_event_loop()
        box["loop"].run_until_complete(main())
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box["port"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(5)


def _map(tmp_path, port: int) -> str:
    node = {"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "IPv4": "127.0.0.1", "IPv6": "none",
            "STUNPort": port, "STUNOnly": True}
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"Regions": {"900": {"RegionID": 900, "RegionCode": "lo", "RegionName": "Loopback",
                                                     "Nodes": [node]}}}))
    return str(path)


def wgc_netcheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wgclient.cli.netcheck", "--no-portmap", "--bind-address",
                           "127.0.0.1", *args], capture_output=True, text=True, timeout=20)


def test_text_and_json_line_and_history(tmp_path, stun_port):
    state = tmp_path / "state" / "netcheck.json"
    proc = wgc_netcheck("--derpmap", _map(tmp_path, stun_port), "--state", str(state))
    assert proc.returncode == 0, proc.stderr
    assert "\t* UDP: true\n\t* IPv4: yes, 127.0.0.1:" in proc.stdout
    assert "\t* PortMapping: not checked\n" in proc.stdout and "CaptivePortal" not in proc.stdout
    assert "\t* Nearest DERP: Loopback\n\t* DERP latency:\n\t\t-  lo: " in proc.stdout
    history = json.loads(state.read_text())
    assert history["Preferred"] == 900 and len(history["Reports"]) == 1
    proc = wgc_netcheck("--derpmap", _map(tmp_path, stun_port), "--state", str(state), "--format", "json-line",
                        "--bind-port", "0")
    report = json.loads(proc.stdout)
    assert proc.stdout.count("\n") == 1 and report["UDP"] is True and report["PreferredDERP"] == 900
    assert report["MappingVariesByDestIP"] is None        # one STUN server: undetermined
    assert len(json.loads(state.read_text())["Reports"]) == 2


def test_unreadable_history_is_a_warning_not_a_crash(tmp_path, stun_port):
    state = tmp_path / "netcheck.json"
    state.write_text("{not json")
    proc = wgc_netcheck("--derpmap", _map(tmp_path, stun_port), "--state", str(state), "--json")
    assert proc.returncode == 0 and "warning: ignoring unreadable netcheck history" in proc.stderr
    assert json.loads(proc.stdout)["UDP"] is True
    assert json.loads(state.read_text())["Preferred"] == 900


@pytest.mark.parametrize("args,message", [
    (["--bind-port", "70000"], "--bind-port out of range"),
    (["--every", "-1"], "--every must be positive"),
    (["--derpmap", "/nonexistent/map.json"], "error: "),
    (["--bind-address", "192.0.2.254"], "error: "),
])
def test_user_mistakes_are_clear_errors(tmp_path, stun_port, args, message):
    base = ["--derpmap", _map(tmp_path, stun_port), "--no-state"]
    proc = wgc_netcheck(*base, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_coturn_as_the_stun_node(tmp_path):
    from tests.support.prereq import require_binary
    import socket
    import time
    require_binary("turnserver")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["turnserver", "-n", "--stun-only", "-L", "127.0.0.1", "-p", str(port), "--no-cli",
                               "--no-tls", "--no-dtls", "--log-file", "stdout", "--simple-log",
                               "--pidfile", str(tmp_path / "turn.pid")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):                    # until it listens
            if f":{port} " in subprocess.run(["ss", "-Hlun", f"sport = :{port}"], capture_output=True,
                                              text=True).stdout:
                break
            time.sleep(0.05)
        proc = wgc_netcheck("--derpmap", _map(tmp_path, port), "--no-state", "--json")
        report = json.loads(proc.stdout)
        assert report["UDP"] is True and report["GlobalV4"].startswith("127.0.0.1:"), proc.stderr
        assert report["PreferredDERP"] == 900
    finally:
        server.terminate()
        server.wait(10)
