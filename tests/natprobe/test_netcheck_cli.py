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


MISTAKES = [
    (["--bind-port", "70000"], "--bind-port out of range: 70000"),
    (["--every", "-1"], "--every must be positive"),
    (["--derpmap", "/nonexistent/map.json"], "cannot read DERP map file '/nonexistent/map.json'"),
    (["--bind-address", "192.0.2.254"], "cannot bind the IPv4 probe socket to 192.0.2.254"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("args,message", MISTAKES)
def test_user_mistakes_are_clear_errors(tmp_path, stun_port, args, message):
    base = ["--derpmap", _map(tmp_path, stun_port), "--no-state"]
    proc = wgc_netcheck(*base, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("wgc: ") and message in proc.stderr


@pytest.mark.parametrize("fmt", [["--json"], ["--format", "json-line"], ["--format=json"]])
@pytest.mark.parametrize("args,message", MISTAKES)
def test_with_json_errors_are_json(tmp_path, stun_port, args, message, fmt):
    proc = wgc_netcheck("--derpmap", _map(tmp_path, stun_port), "--no-state", *fmt, *args)
    assert proc.returncode == 2 and proc.stderr == "", proc.stderr
    error = json.loads(proc.stdout)
    assert list(error) == ["Error"] and message in error["Error"]


def test_help_says_the_default_is_tailscales_public_map():
    from wgclient.cli.netcheck import DEFAULT_DERPMAP
    proc = wgc_netcheck("--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "Tailscale's public map" in text and DEFAULT_DERPMAP in text


@pytest.fixture
def default_map(monkeypatch, tmp_path, stun_port):
    """The built-in default map URL pointed at a loopback HTTP server serving the loopback map (so the
    default path is exercised without traffic leaving the machine)."""
    import http.server
    from wgclient.cli import netcheck
    body = open(_map(tmp_path, stun_port), "rb").read()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/derpmap/default"
    monkeypatch.setattr(netcheck, "DEFAULT_DERPMAP", url)
    monkeypatch.delenv("WGC_DERPMAP", raising=False)
    yield url
    server.shutdown()
    server.server_close()


def netcheck_in_process(capsys, *args: str) -> tuple[int, str, str]:
    from wgclient.cli import netcheck
    code = netcheck.main(["--no-portmap", "--no-state", "--bind-address", "127.0.0.1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_report_says_when_it_used_the_default_map(default_map, capsys, tmp_path, stun_port):
    code, out, err = netcheck_in_process(capsys)
    assert code == 0, err
    assert "\t* Nearest DERP: Loopback\n" in out
    assert out.endswith(f"\t* DERP map: Tailscale's public map, {default_map} (no --derpmap given)\n")
    code, out, _ = netcheck_in_process(capsys, "--json")
    assert json.loads(out)["DERPMap"] == default_map
    code, out, _ = netcheck_in_process(capsys, "--derpmap", _map(tmp_path, stun_port))
    assert code == 0 and "DERP map" not in out and "\t* Nearest DERP: Loopback\n" in out


def test_a_default_map_that_cannot_be_fetched_is_one_line(monkeypatch, capsys):
    from wgclient.cli import netcheck
    url = "http://127.0.0.1:1/derpmap/default"           # loopback, nothing listens: refused
    monkeypatch.setattr(netcheck, "DEFAULT_DERPMAP", url)
    monkeypatch.delenv("WGC_DERPMAP", raising=False)
    code, out, err = netcheck_in_process(capsys)
    assert (code, out) == (2, "")
    assert err == f"wgc: cannot fetch the DERP map {url}: Connection refused (give --derpmap FILE|URL)\n"
    code, out, err = netcheck_in_process(capsys, "--json")
    assert (code, err) == (2, "")
    assert json.loads(out) == {"Error": f"cannot fetch the DERP map {url}: Connection refused "
                                        "(give --derpmap FILE|URL)"}
    code, out, err = netcheck_in_process(capsys, "--derpmap", url)    # named by the user: no hint
    assert err == f"wgc: cannot fetch the DERP map {url}: Connection refused\n"


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
