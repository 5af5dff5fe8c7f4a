"""wgclient.control (pure): request/reply codec, the status schema check, peer selection against a slow
reference, and the text `wgc status` / `wgc ping` print."""
from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.support.control_target import NOW, b64, derp_pong, direct_pong, sample_status
from wgclient import control
from wgclient.errors import ParseError, UsageError

# --- strategies -------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20)
keys32 = st.binary(min_size=32, max_size=32)
opt_text = st.none() | st.text(max_size=12)
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)
NETS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "100.64.0.2/32", "fd00::/8", "fd00::1/128",
        "0.0.0.0/0", "::/0"]
regions = st.builds(lambda i, c: {"id": i, "code": c}, st.integers(1, 1000), opt_text)


@st.composite
def peers(draw, key=None):
    k = draw(key if key is not None else keys32)
    b = base64.b64encode(k).decode()
    return {"public_key": b, "short": b[:8], "name": draw(st.none() | st.sampled_from(["laptop", "Laptop", "phone", "x"])),
            "allowed_ips": draw(st.lists(st.sampled_from(NETS), max_size=3, unique=True)),
            "path": draw(st.sampled_from(control.PATHS)), "direct": draw(st.none() | st.just("198.51.100.7:41641")),
            "relay": draw(st.none() | regions), "latency_ms": draw(st.none() | finite),
            "last_handshake": draw(st.none() | st.floats(NOW - 1e6, NOW)),
            "rx_bytes": draw(st.integers(0, 1 << 50)), "tx_bytes": draw(st.integers(0, 1 << 50)),
            "why": draw(st.text(max_size=40))}


@st.composite
def statuses(draw):
    nc = draw(st.none() | st.fixed_dictionaries({
        "udp": st.booleans(), "ipv4": st.none() | st.just("198.51.100.7:41641"), "ipv6": st.none() | st.just("[2001:db8::1]:41641"),
        "mapping_varies_by_dest_ip": st.none() | st.booleans(), "preferred_region": st.none() | st.integers(1, 999),
        "latency_ms": st.dictionaries(st.text(min_size=1, max_size=5), finite, max_size=4),
        "at": st.none() | st.floats(NOW - 1e5, NOW)}))
    rows = draw(st.lists(st.fixed_dictionaries({"id": st.integers(1, 999), "code": opt_text, "connected": st.booleans(),
                                                "home": st.booleans(), "transport": st.none() | st.sampled_from(["quic", "upgrade", "websocket"])}),
                         max_size=3))
    return {"interface": draw(st.text(min_size=1, max_size=15)), "public_key": draw(st.none() | keys32.map(lambda k: base64.b64encode(k).decode())),
            "listen_port": draw(st.none() | st.integers(0, 65535)), "home_region": draw(st.none() | regions),
            "netcheck": nc, "regions": rows,
            "peers": draw(st.lists(peers(), max_size=5, unique_by=lambda p: p["public_key"]))}


# --- requests ---------------------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_garbage_request_bytes_raise_only_parse_error(data):
    try:
        control.parse_request(data)
    except ParseError:
        pass


@given(json_values)
def test_garbage_json_requests_raise_only_parse_error(value):
    try:
        req = control.parse_request(json.dumps(value).encode())
    except ParseError:
        return
    assert isinstance(value, dict) and value["cmd"] in ("status", "ping")


@given(st.fixed_dictionaries({"cmd": st.just("ping")}, optional={"key": json_values | st.text(min_size=44, max_size=44),
                                                                   "timeout": json_values}))
def test_ping_requests_with_wrong_fields_raise_only_parse_error(value):
    try:
        req = control.parse_request(json.dumps(value).encode())
    except ParseError:
        return
    assert isinstance(req, control.PingRequest) and base64.b64encode(req.key).decode() == value["key"]
    assert 0 < req.timeout <= control.MAX_PING_TIMEOUT


@given(keys32, st.floats(min_value=0.001, max_value=control.MAX_PING_TIMEOUT))
def test_ping_request_round_trip(key, timeout):
    line = control.PingRequest(key, timeout).encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert control.parse_request(line) == control.PingRequest(key, timeout)


def test_status_request_and_defaults():
    assert control.parse_request(control.StatusRequest().encode()) == control.StatusRequest()
    req = control.parse_request(b'{"cmd":"ping","key":"%s"}' % b64(7).encode())
    assert req == control.PingRequest(bytes([7]) * 32, control.DEFAULT_PING_TIMEOUT)


@pytest.mark.parametrize("line, why", [
    (b"", "JSON"), (b"\xff\xfe", "JSON"), (b"[]", "object"), (b'{"cmd": 1}', "needs"),
    (b'{"cmd": "reboot"}', "unknown"), (b'{"cmd": "ping"}', "key"), (b'{"cmd": "ping", "key": "AAAA"}', "base64"),
    (b'{"cmd": "ping", "key": "%s", "timeout": 0}' % b64(1).encode(), "timeout"),
    (b'{"cmd": "ping", "key": "%s", "timeout": 61}' % b64(1).encode(), "timeout"),
    (b'{"cmd": "ping", "key": "%s", "timeout": NaN}' % b64(1).encode(), "JSON"),
    (b'{"cmd": "ping", "key": "%s", "timeout": true}' % b64(1).encode(), "timeout"),
    (b"[" * 100_000, "line longer"), (b'{"cmd": "status", "pad": "' + b"x" * 70_000 + b'"}', "line longer"),
])
def test_bad_requests_name_the_problem(line, why):
    with pytest.raises(ParseError, match=why):
        control.parse_request(line)


# --- replies and the status schema ------------------------------------------------------------------------


@given(statuses())
def test_status_reply_round_trip(status):
    assert control.parse_status_reply(control.encode_status(status)) == status


@given(st.none() | st.builds(lambda lat, addr, r: {"latency": lat, "via": "direct" if addr else "derp", "addr": addr,
                                                    "region": r, "region_code": None},
                             finite, st.none() | st.just("198.51.100.7:1"), st.none() | st.integers(1, 999)))
def test_pong_reply_round_trip(pong):
    assert control.parse_pong_reply(control.encode_pong(pong)) == pong


@given(st.text(max_size=50))
def test_error_reply_becomes_usage_error(message):
    with pytest.raises(UsageError) as e:
        control.parse_status_reply(control.encode_error(message))
    assert str(e.value) == message


@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_garbage_replies_raise_only_parse_or_usage_error(data):
    for parse in (control.parse_status_reply, control.parse_pong_reply):
        try:
            parse(data)
        except (ParseError, UsageError):
            pass


KINDS = {"interface": "s", "public_key": "s?", "listen_port": "i?", "home_region": "o?", "netcheck": "o?",
         "regions": "l", "peers": "l", "id": "i", "code": "s?", "udp": "b", "ipv4": "s?", "ipv6": "s?",
         "mapping_varies_by_dest_ip": "b?", "preferred_region": "i?", "netcheck.latency_ms": "o", "at": "n?",
         "connected": "b", "home": "b", "transport": "s?", "short": "s", "name": "s?", "allowed_ips": "l",
         "path": "s", "direct": "s?", "relay": "o?", "latency_ms": "n?", "last_handshake": "n?", "rx_bytes": "i",
         "tx_bytes": "i", "why": "s"}


def fits(kind, v):
    if v is None:
        return kind.endswith("?")
    return {"s": isinstance(v, str), "i": type(v) is int, "n": type(v) in (int, float), "b": type(v) is bool,
            "o": isinstance(v, dict), "l": isinstance(v, list)}[kind[0]]


@given(statuses(), st.data())
def test_damaged_status_raises_parse_error(status, data):
    """Removing a field or giving it a value of another type anywhere in a valid snapshot is refused."""
    paths = []

    def walk(obj, trail):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if not (trail and trail[-1] == "latency_ms"):   # its keys are free-form region codes
                    paths.append(trail + (k,))
                walk(v, trail + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, trail + (i,))
    walk(status, ())
    path = data.draw(st.sampled_from(paths))
    damaged = copy.deepcopy(status)
    parent = damaged
    for part in path[:-1]:
        parent = parent[part]
    if data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        kind = KINDS["netcheck.latency_ms" if path[-2:] == ("netcheck", "latency_ms") else path[-1]]
        new = data.draw(st.sampled_from([[], {}, "x", 1.5, 7, True, None]))
        assume(not fits(kind, new))
        parent[path[-1]] = new
    with pytest.raises(ParseError):
        control.check_status(damaged)


@given(statuses(), st.builds(lambda lat, d: direct_pong(lat) if d else derp_pong(lat, 7, None),
                             st.floats(0, 100), st.booleans()))
def test_format_status_shows_every_peer(status, pong):
    for p in status["peers"]:   # one line per pong, two per explanation, whatever the names hold
        assert len(control.format_pong(p, pong).splitlines()) == 1
        assert len(control.format_why(p).splitlines()) == 2
    text = control.format_status(status, NOW)
    lines = text.splitlines()
    assert lines[0].startswith(f"interface {control.printable(status['interface'])}")
    if status["peers"]:
        table = lines[lines.index("") + 1:]
        assert table[0].split() == list(control.PEER_COLUMNS)
        assert len(table) == 1 + len(status["peers"])
        for row, p in zip(table[1:], status["peers"]):
            assert p["short"] in row and control.human_bytes(p["tx_bytes"]) in row
    else:
        assert lines[-1] == "no peers"


def test_sample_status_text():
    text = control.format_status(control.check_status(sample_status()), NOW)
    assert text.splitlines()[:5] == [
        f"interface wgt0: public key {b64(1)}, UDP port 51820",
        'home region: "fra" (901), connected over TLS',
        'other regions: "ams" over WebSocket (TLS)',
        "netcheck (40s ago): UDP yes, IPv4 198.51.100.7:41641, IPv6 no",
        '  NAT maps ports per destination: yes; nearest region: "fra" 12ms']
    rows = [line.split("  ") for line in text.splitlines()[6:]]
    rows = [[c.strip() for c in r if c.strip()] for r in rows]
    assert rows[1] == ["laptop", "100.64.0.2/32,fd7a::2/128", "AgICAgIC", "direct 198.51.100.9:41641", "3ms",
                       "12s ago", "123 B", "4.36 MiB"]
    assert rows[2] == ["phone", "100.64.0.3/32", "AwMDAwMD", 'relay "fra"', "25ms", "5m ago", "2.00 KiB", "1.00 KiB"]
    assert rows[3][3] == 'direct 203.0.113.5:1234 (lapsing, also relay "ams")' and rows[3][5] == "never"
    assert rows[4][3] == "none"


def test_header_names_the_transport_in_words():
    """The home region's transport reads TLS or WebSocket, never the client's mode name "upgrade"."""
    s = sample_status()
    assert control.format_header(s, NOW)[1] == 'home region: "fra" (901), connected over TLS'
    s["regions"][0]["transport"] = "websocket"
    assert control.format_header(s, NOW)[1] == 'home region: "fra" (901), connected over WebSocket (TLS)'
    s["regions"][0]["transport"] = "quic"
    assert control.format_header(s, NOW)[1] == 'home region: "fra" (901), connected over QUIC'
    s["regions"][1]["transport"] = "quic"
    assert control.format_header(s, NOW)[2] == 'other regions: "ams" over QUIC'
    s["regions"][1]["connected"] = False
    assert control.format_header(s, NOW)[2] == 'other regions: "ams"'
    s["regions"][0]["transport"] = None
    assert control.format_header(s, NOW)[1] == 'home region: "fra" (901), connected'
    s["regions"][0]["connected"] = False
    assert control.format_header(s, NOW)[1] == 'home region: "fra" (901), not connected'


def test_header_without_derp_map():
    s = sample_status()
    s.update(home_region=None, netcheck=None, regions=[])
    assert control.format_header(s, NOW)[1] == "home region: none (no DERP map: wgc up --derpmap)"


@pytest.mark.parametrize("ms, text", [(0.0, "<0.1ms"), (0.04, "<0.1ms"), (0.05, "0.1ms"), (0.4, "0.4ms"), (0.96, "1ms"), (3.1, "3ms"), (12.5, "12ms"),
                                      (1234.0, "1234ms")])
def test_format_ms(ms, text):
    assert control.format_ms(ms) == text


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"),
                                     (5 << 20, "5.00 MiB"), (3 << 30, "3.00 GiB"), (1 << 50, "1024.00 TiB")])
def test_human_bytes(n, text):
    assert control.human_bytes(n) == text


@pytest.mark.parametrize("ago, text", [(None, "never"), (-5, "0s ago"), (12, "12s ago"), (119, "119s ago"),
                                       (120, "2m ago"), (7199, "119m ago"), (7200, "2h ago"), (3 * 86400, "3d ago")])
def test_format_ago(ago, text):
    assert control.format_ago(None if ago is None else NOW - ago, NOW) == text


def test_ping_lines():
    s = sample_status()
    laptop, _, unnamed, _ = s["peers"]
    assert control.format_pong(laptop, derp_pong(0.012)) == "pong from laptop (100.64.0.2) via DERP(fra) in 12ms"
    assert (control.format_pong(laptop, direct_pong(0.003)) ==
            "pong from laptop (100.64.0.2) via 198.51.100.9:41641 in 3ms")
    assert control.format_pong(unnamed, derp_pong(0.02, 902, None)) == "pong from BAQEBAQE (100.64.0.4) via DERP(902) in 20ms"
    assert control.format_timeout(laptop, 5) == "timeout waiting for pong from laptop (100.64.0.2) (5s)"
    assert control.format_why(s["peers"][1]).splitlines() == [
        'phone (AwMDAwMD): relay "fra"', 'relayed via DERP region "fra": the peer\'s NAT maps ports per destination']


# --- choosing a peer --------------------------------------------------------------------------------------


def reference_select(peers, text):
    """Slow and plain: ("ok", peer) or ("none"|"ambiguous", candidates)."""
    text = text.strip()
    if not text:
        return "none", []
    stages = [[p for p in peers if p["public_key"] == text],
              [p for p in peers if p["name"] == text],
              [p for p in peers if p["name"] is not None and p["name"].lower() == text.lower()]]
    for found in stages:
        if found:
            return ("ok", found[0]) if len(found) == 1 else ("ambiguous", found)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        for plen in range(ip.max_prefixlen, -1, -1):      # longest prefix first, by building each prefix
            net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
            found = [p for p in peers if any(ipaddress.ip_network(n) == net for n in p["allowed_ips"])]
            if found:
                return ("ok", found[0]) if len(found) == 1 else ("ambiguous", found)
        return "none", []
    found = [p for p in peers if p["public_key"][:len(text)] == text]
    if not found:
        return "none", []
    return ("ok", found[0]) if len(found) == 1 else ("ambiguous", found)


# keys that share long base64 prefixes, so prefix queries are often ambiguous
close_keys = st.tuples(st.sampled_from([b"\x00" * 8, b"\x00" * 7 + b"\x01", b"\xff" * 8]),
                       st.binary(min_size=24, max_size=24)).map(lambda t: t[0] + t[1])


@given(st.lists(peers(close_keys), min_size=0, max_size=6, unique_by=lambda p: p["public_key"]), st.data())
def test_select_peer_agrees_with_reference(peer_set, data):
    choices = ["laptop", "LAPTOP", "phone", "nobody", "10.1.2.3", "10.1.9.9", "10.200.0.1", "100.64.0.2",
               "fd00::1", "fd00::2", "2001:db8::1", "AAAA", "AAAAAA", "//", "/w", "  x  ", ""]
    choices += [p["public_key"][:n] for p in peer_set for n in (1, 11, 12, 44)]
    text = data.draw(st.sampled_from(choices) | st.text(max_size=6))
    kind, expected = reference_select(peer_set, text)
    if kind == "ok":
        assert control.select_peer(peer_set, text) is expected
        return
    with pytest.raises(UsageError) as e:
        control.select_peer(peer_set, text)
    if kind == "ambiguous":
        assert f"matches {len(expected)} peers" in str(e.value)
        assert all(p["short"] in str(e.value) for p in expected)


def test_select_peer_examples():
    peers = sample_status()["peers"]
    pick = lambda text: control.select_peer(peers, text)["short"]   # noqa: E731
    assert pick("laptop") == pick("Laptop") == pick("100.64.0.2") == pick("fd7a::2") == pick("AgI") == "AgICAgIC"
    assert pick("10.9.0.5") == "BAQEBAQE" and pick("10.9.0.200") == "BQUFBQUF"   # /24 vs the longer /25
    assert pick(b64(3)) == "AwMDAwMD"
    with pytest.raises(UsageError, match="no peer has 192.0.2.1"):
        control.select_peer(peers, "192.0.2.1")
    with pytest.raises(UsageError, match="no peer matches 'zzz'.*laptop"):
        control.select_peer(peers, "zzz")
    twins = [dict(peers[0]), dict(peers[1], name="laptop")]
    with pytest.raises(UsageError, match="matches 2 peers by name: laptop \\(AgICAgIC\\), laptop \\(AwMDAwMD\\)"):
        control.select_peer(twins, "laptop")


def test_control_characters_are_escaped():
    peer = dict(sample_status()["peers"][0], name="evil\x1b[2J", why="line one\nline two\u2028")
    assert control.format_why(peer) == ("evil\\x1b[2J (AgICAgIC): direct 198.51.100.9:41641\n"
                                        "line one\\nline two\\u2028\n")
    assert control.format_pong(peer, derp_pong()).startswith("pong from evil\\x1b[2J (100.64.0.2)")


def test_tunnel_ip_prefers_a_host_route():
    assert control.tunnel_ip({"allowed_ips": ["10.9.0.0/24", "100.64.0.4/32"]}) == "100.64.0.4"
    assert control.tunnel_ip({"allowed_ips": ["10.9.0.0/24"]}) == "10.9.0.0"
    assert control.tunnel_ip({"allowed_ips": []}) is None


# --- docs/control.md's samples are what the code prints ------------------------------------------------

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                   "control.md")


def _doc_output(pattern: str) -> tuple[str, list[str]]:
    """The first `$ wgc ...` command of the doc that matches pattern, and the lines shown after it (up to the
    next prompt or the end of the block)."""
    with open(DOC) as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(pattern, line.split("#")[0].strip()))
    out = []
    for line in lines[start + 1:]:
        if line.startswith("$ ") or line == "```":
            break
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return lines[start].split("#")[0].strip(), out


def test_doc_why_sample_is_what_the_code_prints():
    """The `--why` sample (peers behind symmetric NATs, relayed in "r1") is format_why of the path
    manager's own explanation for that situation, line for line."""
    import random

    from wgclient import keys
    from wgclient.path import disco
    from wgclient.path.discokeys import derive_pair
    from wgclient.path.manager import NetInfo, PathManager

    ka, kb = keys.clamp(bytes(range(32))), keys.clamp(bytes(range(7, 39)))
    a, b = keys.public_key(ka), keys.public_key(kb)
    m = PathManager(ka, random_bytes=random.Random(1).randbytes)
    m.add_peer(b)
    m.set_regions({901: "r1", 902: "r2"}, 0.0)
    info = disco.NodeInfo(901, disco.NI_UDP | disco.NI_MAPPING_KNOWN | disco.NI_HARD_NAT)
    m.on_disco(derive_pair(kb, a).box.seal(info.encode(), b"n" * 24), 1.0, region=901, derp_src=b)
    m.on_netcheck(NetInfo(901, {901: 0.01, 902: 0.04}, True, True, (("198.19.3.2", 41641),)), 1.0)
    m.on_data_sent(b, 1.0)  # the sample was taken with traffic flowing (a ping through the tunnel)
    command, shown = _doc_output(r"\$ wgc status --why \S+")
    assert len(shown) == 2, shown
    short = shown[0].split("(")[1].split(")")[0]
    peer = {"name": command.split()[-1], "short": short, "path": "relay", "direct": None,
            "relay": {"id": 901, "code": "r1", "transport": "upgrade"}, "why": m.why(b, 1.0)}
    assert control.format_why(peer).splitlines() == shown


def test_why_names_the_relay_transport():
    """`--why` of a relayed peer says what its relay is reached over; a direct one says nothing of it."""
    relayed = {"name": "phone", "short": "AwMDAwMD", "path": "relay", "direct": None, "why": "because",
               "relay": {"id": 901, "code": "fra", "transport": "quic"}}
    assert control.format_why(relayed).splitlines() == ['phone (AwMDAwMD): relay "fra" over QUIC', "because"]
    relayed["relay"]["transport"] = "upgrade"
    assert control.format_why(relayed).splitlines()[0] == 'phone (AwMDAwMD): relay "fra" over TLS'
    relayed["relay"]["transport"] = None      # not connected right now
    assert control.format_why(relayed).splitlines()[0] == 'phone (AwMDAwMD): relay "fra"'
    direct = dict(relayed, path="direct", direct="192.0.2.1:41641", relay={"id": 901, "code": "fra",
                                                                          "transport": "quic"})
    assert control.format_why(direct).splitlines()[0] == "phone (AwMDAwMD): direct 192.0.2.1:41641"
    status = control.check_status(sample_status())
    status["peers"][0]["relay"] = {"id": 1, "code": "x", "transport": 7}
    with pytest.raises(control.ParseError, match="relay.transport"):
        control.check_status(status)


def test_doc_status_sample_uses_the_transport_words():
    _, header = _doc_output(r"\$ wgc status( \w+)?")
    assert header[1] == 'home region: "r1" (901), connected over TLS'
    with open(DOC) as f:
        assert "over upgrade" not in f.read()
