"""`wgc derpmap write | validate | show` (issue 10 §5) as subprocesses: a map for two relays from flags,
mistakes named by flag or by region/node/field in one line, validation of files and a loopback URL with
warnings, and the map a running interface uses read through a control socket (a stand-in daemon); plus
`wgc up`'s DERP map flags refused cleanly before anything is created."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from derp.derpmap import parse_derpmap
from tests.support.control_target import ScriptedTarget
from tests.wgclient.test_cli_status_ping import Daemons, env  # noqa: F401  (fixture)
from tests.wgclient.test_derpmap_source import MapServer, map_text
from wgclient.cli.derpmap import build_map, parse_duration
from wgclient.errors import UsageError

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIN = "sha256-raw:" + "ab" * 32

TWO_RELAYS = ["--region", "900", "--code", "fra", "--name", "Frankfurt", "--host", "derp-fra.example.net",
              "--ipv4", "203.0.113.10", "--ipv6", "2001:db8::10",
              "--region", "901", "--code", "nyc", "--host", "203.0.113.20", "--cert-name", PIN,
              "--derp-port", "8443", "--stun-port", "-1", "--ipv6", "none", "--host", "stun.example.net",
              "--stun-only", "--no-measure-no-home"]


def wgc(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "wgclient.cli", *args], capture_output=True, text=True,
                          env=e, timeout=30)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wgc: "), proc.stderr
    return lines[0]


def test_write_two_relays_from_flags(tmp_path) -> None:
    res = wgc("derpmap", "write", *TWO_RELAYS)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    dm = parse_derpmap(res.stdout)
    assert doc["omitDefaultRegions"] is True and set(dm.regions) == {900, 901}
    fra, nyc = dm.regions[900], dm.regions[901]
    assert (fra.region_code, fra.region_name, nyc.no_measure_no_home) == ("fra", "Frankfurt", True)
    a = fra.nodes[0]
    assert (a.name, a.host_name, a.ipv4, a.ipv6) == ("900a", "derp-fra.example.net", "203.0.113.10", "2001:db8::10")
    b, s = nyc.nodes
    assert (b.name, b.cert_pin(), b.effective_derp_port(), b.effective_stun_port(), b.ipv6_enabled()) == (
        "901a", bytes.fromhex("ab" * 32), 8443, None, False)
    assert (s.name, s.stun_only) == ("901b", True)
    out = tmp_path / "map.json"
    res = wgc("derpmap", "write", *TWO_RELAYS, "--policy", "-o", str(out))
    assert res.returncode == 0 and res.stdout == ""
    assert "derpMap" in json.loads(out.read_text()) and parse_derpmap(out.read_text()) == dm


@pytest.mark.parametrize("args, words", [
    (["--host", "h"], "--host comes before any --region"),
    (["--region", "900", "--ipv4", "1.2.3.4"], "--ipv4 comes before any --host of region 900"),
    (["--region", "900"], "region 900 has no --host"),
    (["--region", "900", "--host", "h", "--region", "900", "--host", "g"], "--region 900 is given twice"),
    (["--region", "900", "--host", "h", "--ipv4", "1.2.3"], "not an IPv4 address"),
    (["--region", "900", "--host", "h", "--ipv6", "1.2.3.4"], "not an IPv6 address"),
    (["--region", "900", "--host", "h", "--derp-port", "70000"], "not a port"),
    (["--region", "0", "--host", "h"], "not a region id"),
    (["--region", "900", "--host", "h", "--cert-name", "sha256-raw:zz"],
     "region 900 node '900a': CertName sha256-raw: needs 64 hex characters"),
    ([], "give at least one --region"),
])
def test_write_mistakes_are_one_line_naming_the_flag_or_field(args, words) -> None:
    assert words in one_line(wgc("derpmap", "write", *args))


def test_build_map_is_what_the_parser_accepts() -> None:
    dm = build_map([("region", 900), ("host", "h"), ("code", "lab"), ("derp_port", 443)])
    assert dm.regions[900].region_code == "lab" and dm.regions[900].nodes[0].derp_port == 443
    with pytest.raises(UsageError):
        build_map([("region", 900), ("host", "")])


def test_validate_files_and_a_url(tmp_path) -> None:
    good = tmp_path / "good.json"
    good.write_text(wgc("derpmap", "write", *TWO_RELAYS).stdout)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"Regions": {"900": {"RegionID": 900, "RegionCode": "fra", "Nodes": [
        {"Name": "900a", "RegionID": 900, "HostName": "h", "Port": 443}]}}}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"derpMap": {"Regions": {"900": {"RegionID": 900, "Nodes": [
        {"Name": "900a", "RegionID": 900, "HostName": "h", "DERPPort": 99999}]}}}}))
    server = MapServer(map_text(902))
    try:
        res = wgc("derpmap", "validate", str(good), str(typo), server.url)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.splitlines() == [
            f'{good}: ok, 2 regions, omitDefaultRegions: 900 "fra" (1 node), 901 "nyc" (2 nodes)',
            f"{typo}: warning: region 900 node '900a': unknown field 'Port' (ignored)",
            f'{typo}: ok, 1 region: 900 "fra" (1 node)',
            f'{server.url}: ok, 1 region: 902 "r902" (1 node)']
        res = wgc("derpmap", "validate", str(bad), str(good))
        assert res.returncode == 1
        assert res.stdout.splitlines()[0] == f"{bad}: error: derpMap: region 900 node '900a': DERPPort 99999 out of range"
        server.status = 404
        res = wgc("derpmap", "validate", server.url)
        assert res.returncode == 1 and "answered HTTP 404" in res.stdout
    finally:
        server.close()


class MapTarget(ScriptedTarget):
    def derpmap(self):
        return json.loads(map_text(900)), {"source": "https://relay.example.net/derpmap/default", "refreshes": 3}


class NoMapTarget(ScriptedTarget):
    def derpmap(self):   # as wgclient.aio.control_target.NodeControl without --derpmap
        raise UsageError("wgm1 runs without a DERP map (wgc up --derpmap)")


def test_show_prints_the_map_the_interface_uses(env) -> None:  # noqa: F811
    daemons = Daemons()
    try:
        daemons.start("wgm0", MapTarget())
        res = wgc("derpmap", "show", env=env)
        assert res.returncode == 0, res.stderr
        assert set(parse_derpmap(res.stdout).regions) == {900}
        res = wgc("derpmap", "show", "wgm0", "--source", env=env)
        assert json.loads(res.stdout)["source"] == "https://relay.example.net/derpmap/default"
        daemons.start("wgm1", NoMapTarget())
        assert "several wgc interfaces" in one_line(wgc("derpmap", "show", env=env))
        assert "wgm1 runs without a DERP map" in one_line(wgc("derpmap", "show", "wgm1", env=env))
    finally:
        daemons.close()
    assert "is not running" in one_line(wgc("derpmap", "show", "wgm9", env=env))


def test_derpmap_usage() -> None:
    res = wgc("derpmap")
    assert res.returncode == 1 and res.stderr.startswith("usage: wgc derpmap write")
    assert "unknown derpmap command 'frob'" in wgc("derpmap", "frob").stderr


@pytest.mark.parametrize("text, seconds", [("300", 300), ("30s", 30), ("5m", 300), ("1m30s", 90), ("1h", 3600),
                                           ("0", 0), ("off", 0), ("250ms", 0.25)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_up_flags_are_refused_before_anything_is_created(tmp_path) -> None:
    conf = tmp_path / "wgdm0.conf"
    conf.write_text("[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n")
    os.chmod(conf, 0o600)
    env = {"WGC_PID_DIR": str(tmp_path / "pid"), "WGC_LOG_DIR": str(tmp_path / "log"),
           "WGC_STATE_DIR": str(tmp_path / "state")}
    assert "--metrics-addr" in one_line(wgc("up", str(conf), "--foreground", "--metrics-addr", "nope:1", env=env))
    assert "need --derpmap" in one_line(wgc("up", str(conf), "--foreground", "--derpmap-refresh", "1m", env=env))
    assert "need --derpmap" in one_line(wgc("up", str(conf), "--foreground", "--derp-transport", "quic", env=env))
    assert "invalid choice: 'udp'" in one_line(wgc("up", str(conf), "--foreground", "--derpmap", "x",
                                                  "--derp-transport", "udp", env=env))
    assert "not a duration" in one_line(wgc("up", str(conf), "--foreground", "--derpmap", "x",
                                            "--derpmap-refresh", "soon", env=env))
    err = one_line(wgc("up", str(conf), "--foreground", "--derpmap", "http://127.0.0.1:1/a",
                       "--derpmap", str(tmp_path / "missing.json"), env=env))
    assert "127.0.0.1:1" in err and "missing.json" in err and "no cached map" in err
    assert not (tmp_path / "pid" / "wgdm0.pid").exists() and not (tmp_path / "state").exists()


def test_up_fetches_the_map_with_the_interfaces_firewall_mark(tmp_path) -> None:
    """The map `up` loads before anything exists, and every refresh until the UDP port is up, carry the mark
    the interface's sockets will (FwMark here; a full tunnel's chosen mark otherwise)."""
    from wgclient.cli.derpmap import up_serve_kwargs
    from wgclient.cli.main import parser
    from wgclient.config import parse_config
    (tmp_path / "map.json").write_text(map_text(900))
    config = parse_config("[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nFwMark = 0x77\n",
                          "wgdm0.conf")
    args = parser().parse_args(["up", "wgdm0.conf", "--derpmap", str(tmp_path / "map.json"), "--derpmap-cache", "off"])
    kwargs = up_serve_kwargs(args, config)
    assert kwargs["derpmap_source"].fwmark() == 0x77 and "derp_transport" not in kwargs   # auto
    args = parser().parse_args(["up", "wgdm0.conf", "--derpmap", str(tmp_path / "map.json"), "--derpmap-cache", "off",
                                "--derp-transport", "websocket"])
    assert up_serve_kwargs(args, config)["derp_transport"] == "websocket"


def test_quic_port_written_and_named_by_validate(tmp_path) -> None:
    """`--quic-port` sets a node's WgcQUICPort (docs/derp-quic.md); validate names the nodes that speak QUIC
    and refuses a bad port naming the region and node."""
    res = wgc("derpmap", "write", "--region", "900", "--code", "fra", "--host", "a.example", "--quic-port", "443",
              "--host", "b.example", "--region", "901", "--host", "c.example", "--quic-port", "8443")
    assert res.returncode == 0, res.stderr
    nodes = json.loads(res.stdout)["Regions"]["900"]["Nodes"]
    assert [n.get("WgcQUICPort") for n in nodes] == [443, None]
    good = tmp_path / "good.json"
    good.write_text(res.stdout)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [
        {"Name": "900a", "RegionID": 900, "HostName": "h", "WgcQUICPort": 70000}]}}}))
    res = wgc("derpmap", "validate", str(good), str(bad))
    assert res.stdout.splitlines() == [
        f'{good}: ok, 2 regions, omitDefaultRegions: 900 "fra" (2 nodes, 1 with QUIC), 901 "r901" (1 node, QUIC)',
        f"{bad}: error: region 900 node '900a': WgcQUICPort 70000 out of range (1-65535, or 0 for no QUIC)"]
    assert res.returncode == 1
