"""`wgc netcheck` end to end in the NAT lab: every NAT type, IPv6, port mapping, captive portal, the HTTPS
fallback when UDP is blocked, Debian's stund as a STUN node, and the home-region hysteresis."""
from __future__ import annotations

import json
import re
import sys
import time

import pytest

from tests.support.patterns import DURATION
from tests.support.prereq import require_binary, require_root

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
PORT = 41641
# The regions' added round trips, far enough apart that their order survives a loaded machine (which adds
# 20-50 ms to a measured latency on the 2-core box: Python wakes up late in the delayer, the STUN server
# and netcheck), and what such a machine may add at most.
DELAYS = (10, 60, 150)
SLACK_MS = 100


def _ready(proc, what: str, word: str = "ready") -> None:
    line = proc.stdout.readline()
    assert word in line, f"{what} did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"


@pytest.fixture(scope="module")
def lab():
    require_root()
    require_binary("nft")
    from tools.natlab.lab import ClientSpec, NatLab, RegionSpec

    with NatLab([RegionSpec(d) for d in DELAYS],
                [ClientSpec(n) for n in ("none", "cone", "symmetric", "udp-blocked", "cgnat")]) as lab:
        fake = [sys.executable, "-m", "tools.natlab.fake_services"]
        started = [(lab.popen(f"region{i}", sys.executable, "-m", "natprobe", "stun-server", text=True), "listening")
                   for i in (1, 2, 3)]
        started += [(lab.popen(node, *fake, *args, text=True), "ready") for node, args in (
            ("region1", ["https"]), ("region1", ["captive"]), ("region3", ["captive", "--mode", "portal"]),
            ("nat2", ["portmap", "--pmp", "--pcp", "--upnp"]), ("nat3", ["portmap", "--pmp"]))]
        for proc, word in started:          # started together, waited for in turn
            _ready(proc, " ".join(proc.args[-3:]), word)
        yield lab


def netcheck(lab, node: str, derpmap: dict, tmp_path, *args: str) -> tuple[dict, float, str]:
    path = tmp_path / f"map{time.monotonic_ns()}.json"
    path.write_text(json.dumps(derpmap))
    start = time.monotonic()
    proc = lab.run(node, sys.executable, "-m", "wgclient.cli.netcheck", "--derpmap", str(path), "--format",
                   "json", "--verbose", "--bind-port", str(PORT), *args, timeout=20)
    elapsed = time.monotonic() - start
    assert "Traceback" not in proc.stderr, proc.stderr
    match = re.search(r"netcheck done in (\d+) ms", proc.stderr)
    assert match, proc.stderr
    return json.loads(proc.stdout), elapsed, match.group(1)


def _latencies_ms(report: dict) -> dict[int, float]:
    return {int(k): v / 1e6 for k, v in report["RegionLatency"].items()}


def _check_latencies(report: dict) -> None:
    lat = _latencies_ms(report)
    assert sorted(lat) == [901, 902, 903], lat
    for rid, delay in zip((901, 902, 903), DELAYS):
        assert delay <= lat[rid] < delay + SLACK_MS, lat
    assert lat[901] < lat[902] < lat[903]
    assert report["PreferredDERP"] == 901


CASES = {  # nat -> (client, MappingVariesByDestIP, exact GlobalV4 or just its IP)
    "none": (1, False, f"198.19.1.2:{PORT}"),
    "cone": (2, False, f"198.19.2.2:{PORT}"),      # Linux masquerade keeps the port: endpoint-independent
    "symmetric": (3, True, "198.19.3.2"),
    "cgnat": (5, False, "198.19.5.2"),
}


@pytest.mark.parametrize("nat", list(CASES))
def test_udp_mapping_and_latency_per_nat_type(lab, tmp_path, nat):
    client, varies, global_v4 = CASES[nat]
    report, elapsed, took_ms = netcheck(lab, f"client{client}", lab.derpmap(), tmp_path)
    assert report["UDP"] is True and report["IPv4"] is True
    assert report["MappingVariesByDestIP"] is varies
    if ":" in global_v4:
        assert report["GlobalV4"] == global_v4
    else:
        assert report["GlobalV4"].rsplit(":", 1)[0] == global_v4
    _check_latencies(report)
    # the run itself, without interpreter start-up: it ended when every region had answered, well before
    # the 3 s STUN phase would have run out
    assert int(took_ms) < 2000, (took_ms, elapsed)


def test_ipv6_public_address_without_nat(lab, tmp_path):
    report, _, _ = netcheck(lab, "client1", lab.derpmap(), tmp_path)
    assert report["IPv6"] is True and report["GlobalV6"] == f"[2001:db8:19:1::2]:{PORT}"
    assert sorted(report["RegionV6Latency"]) == ["901", "902", "903"]
    assert report["OSHasIPv6"] is True
    cgnat, _, _ = netcheck(lab, "client5", lab.derpmap(), tmp_path)
    assert cgnat["IPv6"] is False and cgnat["GlobalV6"] == ""


def test_port_mapping_services_on_the_gateway(lab, tmp_path):
    cone, _, _ = netcheck(lab, "client2", lab.derpmap(), tmp_path)
    assert (cone["UPnP"], cone["PMP"], cone["PCP"]) == (True, True, True)
    sym, _, _ = netcheck(lab, "client3", lab.derpmap(), tmp_path)
    assert (sym["UPnP"], sym["PMP"], sym["PCP"]) == (False, True, False)
    none, _, _ = netcheck(lab, "client1", lab.derpmap(), tmp_path)
    assert (none["UPnP"], none["PMP"], none["PCP"]) == (False, False, False)
    skipped, _, _ = netcheck(lab, "client1", lab.derpmap(), tmp_path, "--no-portmap")
    assert (skipped["UPnP"], skipped["PMP"], skipped["PCP"]) == (None, None, None)


def test_udp_blocked_falls_back_to_https_and_icmp_within_three_seconds(lab, tmp_path):
    derpmap = lab.derpmap()
    derpmap["Regions"]["901"]["Nodes"][0]["CanPort80"] = True
    report, elapsed, took_ms = netcheck(lab, "client4", derpmap, tmp_path, "--no-icmp")
    assert report["UDP"] is False and report["GlobalV4"] == "" and report["MappingVariesByDestIP"] is None
    lat = _latencies_ms(report)
    assert list(lat) == [901] and DELAYS[0] <= lat[901] < DELAYS[0] + SLACK_MS, lat   # only region 1 serves HTTPS
    assert report["IPv4"] is True and report["ICMPv4"] is False and report["RegionV4Latency"] == {}
    assert report["PreferredDERP"] == 901
    assert report["CaptivePortal"] is False
    assert int(took_ms) < 3000 and elapsed < 6.0, (took_ms, elapsed)
    # With ICMP (TCP and ICMP pass the router, UDP does not) every region's node answers a ping, but only
    # region 1's relay answered (HTTPS): the pings are reported apart and do not make a region nearest.
    report, elapsed, took_ms = netcheck(lab, "client4", derpmap, tmp_path)
    assert report["UDP"] is False and report["ICMPv4"] is True
    assert list(_latencies_ms(report)) == [901] and report["RegionLatencyProbe"] == {"901": "HTTPS"}
    icmp = {int(k): v / 1e6 for k, v in report["RegionICMPLatency"].items()}
    assert sorted(icmp) == [901, 902, 903] and icmp[901] < icmp[902] < icmp[903], icmp
    assert report["PreferredDERP"] == 901
    assert int(took_ms) < 3000 and elapsed < 6.0, (took_ms, elapsed)


def test_captive_portal_detected(lab, tmp_path):
    derpmap = lab.derpmap()
    derpmap["Regions"]["903"]["Nodes"][0]["CanPort80"] = True   # region 3 answers /generate_204 with a 302
    report, _, _ = netcheck(lab, "client1", derpmap, tmp_path)
    assert report["CaptivePortal"] is True
    report, _, _ = netcheck(lab, "client4", lab.derpmap(), tmp_path)
    assert report["CaptivePortal"] is None                      # no node serves port 80: not checked


def test_region_down_still_finishes_quickly(lab, tmp_path):
    derpmap = lab.derpmap()
    derpmap["Regions"]["904"] = {"RegionID": 904, "RegionCode": "dn", "RegionName": "Down",
                                 "Nodes": [{"Name": "904a", "RegionID": 904, "HostName": "198.18.99.2",
                                            "IPv4": "198.18.99.2", "IPv6": "none"}]}
    report, elapsed, took_ms = netcheck(lab, "client1", derpmap, tmp_path, "--no-portmap")
    assert report["UDP"] is True and "904" not in report["RegionLatency"]
    assert int(took_ms) < 3000 and elapsed < 6.0, (took_ms, elapsed)


def test_debian_stund_as_the_stun_node(lab, tmp_path):
    require_binary("stund")
    import subprocess
    proc = lab.popen("region3", "stund", "-h", "198.18.3.2", "-a", "198.18.3.3", "-p", "3480", "-o", "3481",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):                      # until stund listens (it prints nothing useful unbuffered)
            if "3480" in lab.run("region3", "ss", "-Hlun", "sport = :3480").stdout or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "stund exited"
        derpmap = {"Regions": {"903": lab.derpmap()["Regions"]["903"]}}
        derpmap["Regions"]["903"]["Nodes"][0].update({"STUNPort": 3480, "IPv6": "none"})
        report, _, _ = netcheck(lab, "client2", derpmap, tmp_path, "--no-portmap")
        assert report["UDP"] is True and report["GlobalV4"] == f"198.19.2.2:{PORT}"
        assert DELAYS[2] <= _latencies_ms(report)[903] < DELAYS[2] + SLACK_MS
    finally:
        proc.kill()
        proc.wait()


def test_text_output_and_bad_input(lab, tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(lab.derpmap()))
    out = lab.run("client2", sys.executable, "-m", "wgclient.cli.netcheck", "--derpmap", str(path), "--no-state",
                  timeout=20).stdout
    assert "\t* UDP: true\n" in out and "\t* MappingVariesByDestIP: false\n" in out
    assert "\t* PortMapping: UPnP, NAT-PMP, PCP\n" in out and "\t* Nearest DERP: Lab region 1\n" in out
    row = r"\t\t-  r{}: " + DURATION + r" +STUN +\(Lab region {}\)\n"
    assert re.search("".join(row.format(i, i) for i in (1, 2, 3)), out), out   # sorted by latency
    for bad in ([str(tmp_path / "missing.json")], ["/etc/hostname"]):
        proc = lab.run("client1", sys.executable, "-m", "wgclient.cli.netcheck", "--derpmap", *bad, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("wgc: ") and "Traceback" not in proc.stderr


def test_home_region_hysteresis_across_runs(tmp_path):
    require_root()
    from tools.natlab.lab import ClientSpec, NatLab, RegionSpec

    state = tmp_path / "history.json"
    # Delays large against what a loaded machine adds (SLACK_MS), so each step is clear at any speed.
    with NatLab([RegionSpec(300), RegionSpec(400)], [ClientSpec("none")]) as lab:
        for i in (1, 2):
            _ready(lab.popen(f"region{i}", sys.executable, "-m", "natprobe", "stun-server", text=True),
                   "STUN server", "listening")
        path = tmp_path / "map.json"
        path.write_text(json.dumps(lab.derpmap(ipv6=False)))

        def home() -> tuple[int, dict]:
            proc = lab.run("client1", sys.executable, "-m", "wgclient.cli.netcheck", "--derpmap", str(path),
                           "--json", "--state", str(state), "--no-portmap", timeout=20)
            report = json.loads(proc.stdout)
            return report["PreferredDERP"], _latencies_ms(report)

        first, lat = home()
        assert first == 901, lat
        lab.set_delay(2, 240)            # region 2 is now 60 ms faster, but not a third faster: keep 901
        held, lat = home()
        assert lat[902] < lat[901] and held == 901, lat
        lab.set_delay(2, 40)             # now far better (> 10 ms and > 1/3): switch
        switched, lat = home()
        assert switched == 902, lat
        lab.set_delay(2, 240)            # back to 240 ms, still better than region 1 at 300: 902 stays home
        kept, lat = home()
        assert kept == 902, lat
    history = json.loads(state.read_text())
    assert history["Preferred"] == 902 and len(history["Reports"]) == 4


def test_repeated_reports_are_incremental(tmp_path):
    require_root()
    require_binary("nft")
    import subprocess
    from tools.natlab.lab import ClientSpec, NatLab, RegionSpec

    # the 3 fastest are apart from each other and from the 2 slow ones by more than a loaded machine adds
    with NatLab([RegionSpec(d) for d in (20, 100, 120, 200, 220)], [ClientSpec("cone")]) as lab:
        for i in range(1, 6):
            _ready(lab.popen(f"region{i}", sys.executable, "-m", "natprobe", "stun-server", text=True),
                   "STUN server", "listening")
        path = tmp_path / "map.json"
        path.write_text(json.dumps(lab.derpmap()))
        proc = lab.popen("client1", sys.executable, "-m", "wgclient.cli.netcheck", "--derpmap", str(path),
                         "--no-state", "--no-portmap", "--format", "json-line", "--every", "0.1", "--verbose", text=True,
                         stderr=subprocess.DEVNULL)
        try:
            first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        finally:
            proc.kill()
            proc.wait()
    assert sorted(first["RegionLatency"]) == ["901", "902", "903", "904", "905"]   # full: every region
    assert sorted(second["RegionLatency"]) == ["901", "902", "903"]                # the 3 fastest (home first)
    assert first["PreferredDERP"] == second["PreferredDERP"] == 901
