"""DERP map parsing: the derpmap.md example, defaults, case-insensitive keys, errors, round trips, loading."""
from __future__ import annotations

import http.server
import json
import ssl
import threading

import pytest
from hypothesis import given, strategies as st

from derp.aio.certs import make_ca, make_cert, server_context, write_pair
from derp.aio.derpmap_loader import load_derpmap
from derp.derpmap import DerpMap, DerpNode, DerpRegion, parse_derpmap
from derp.errors import ParseError, UsageError

EXAMPLE = """{
  "HomeParams": { "RegionScore": { "900": 0.8 } },
  "Regions": {
    "900": {"RegionID": 900, "RegionCode": "home", "RegionName": "Home Lab",
      "Nodes": [
        {"Name": "900a", "RegionID": 900, "HostName": "derp1.example.net", "IPv4": "203.0.113.10",
         "IPv6": "2001:db8::10", "CanPort80": true},
        {"Name": "900b", "RegionID": 900, "HostName": "203.0.113.11",
         "CertName": "sha256-raw:%s", "IPv6": "none", "DERPPort": 8443, "STUNPort": 3479}]},
    "901": {"RegionID": 901, "RegionCode": "ams", "RegionName": "Amsterdam", "NoMeasureNoHome": true,
      "Nodes": [
        {"Name": "901a", "RegionID": 901, "HostName": "derp-ams.example.net"},
        {"Name": "901s", "RegionID": 901, "HostName": "stun-ams.example.net", "STUNOnly": true}]},
    "1": null
  },
  "omitDefaultRegions": true
}""" % ("ab" * 32)


def test_example_from_derpmap_md() -> None:
    m = parse_derpmap(EXAMPLE)
    assert set(m.regions) == {900, 901}  # null region dropped
    assert m.omit_default_regions is True
    assert m.home_params is not None and m.home_params.score(900) == 0.8 and m.home_params.score(901) == 1.0
    a, b = m.regions[900].nodes
    assert (a.name, a.host_name, a.pinned_ipv4(), a.pinned_ipv6(), a.can_port80) == (
        "900a", "derp1.example.net", "203.0.113.10", "2001:db8::10", True)
    assert a.effective_stun_port() == 3478 and a.effective_derp_port() == 443
    assert a.url() == "https://derp1.example.net/derp"
    assert b.effective_derp_port() == 8443 and b.effective_stun_port() == 3479
    assert b.ipv6_enabled() is False and b.ipv4_enabled() is True and b.pinned_ipv4() is None
    assert b.cert_pin() == bytes.fromhex("ab" * 32) and b.tls_name() == "203.0.113.11"
    assert b.url() == "https://203.0.113.11:8443/derp"
    r901 = m.regions[901]
    assert r901.no_measure_no_home and [n.name for n in r901.derp_nodes()] == ["901a"]
    assert m.node_by_name("901s").stun_only


def test_case_insensitive_keys_like_go() -> None:
    text = '{"regions": {"7": {"REGIONID": 7, "regioncode": "x", "nodes": [' \
           '{"name": "7a", "regionid": 7, "hostname": "h", "stunport": -1, "ipv4": "none", ' \
           '"insecurefortests": true}]}}, "OmitDefaultRegions": true}'
    m = parse_derpmap(text)
    node = m.regions[7].nodes[0]
    assert m.omit_default_regions and m.regions[7].region_code == "x"
    assert node.effective_stun_port() is None and not node.ipv4_enabled() and node.insecure_for_tests
    assert node.ipv6_enabled() and node.pinned_ipv6() is None


def test_unknown_keys_ignored_and_empty_map() -> None:
    assert parse_derpmap('{"Regions": {}, "Whatever": [1, 2]}').regions == {}
    assert parse_derpmap("{}").regions == {}


@pytest.mark.parametrize("text, words", [
    ("not json", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"Regions": {"abc": {}}}', "not a decimal region ID"),
    ('{"Regions": {"0": {"RegionID": 0}}}', "out of range"),
    ('{"Regions": {"5": {"RegionID": 6}}}', "region 5: RegionID 6 does not match"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"RegionID": 5, "HostName": "h"}]}}}',
     "region 5 node #0: Name is required"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 5}]}}}',
     "region 5 node '5a': HostName is required"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 4, "HostName": "h"}]}}}',
     "does not match its region 5"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 5, "HostName": "h", '
     '"DERPPort": "443"}]}}}', "DERPPort must be an integer"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 5, "HostName": "h", '
     '"DERPPort": 70000}]}}}', "DERPPort 70000 out of range"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 5, "HostName": "h", '
     '"CertName": "sha256-raw:zz"}]}}}', "sha256-raw"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "x", "RegionID": 5, "HostName": "h"}]},'
     ' "6": {"RegionID": 6, "Nodes": [{"Name": "x", "RegionID": 6, "HostName": "h"}]}}}', "unique"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 5, "HostName": "h", '
     '"WgcQUICPort": 65536}]}}}', "region 5 node '5a': WgcQUICPort 65536 out of range"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 5, "HostName": "h", '
     '"WgcQUICPort": -1}]}}}', "region 5 node '5a': WgcQUICPort -1 out of range"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 5, "HostName": "h", '
     '"WgcQUICPort": "443"}]}}}', "region 5 node '5a': WgcQUICPort must be an integer"),
    ('{"Regions": {"5": {"RegionID": 5, "Nodes": {}}}}', "Nodes must be list"),
    ('{"Regions": {"5": {"RegionID": 5, "Avoid": "yes"}}}', "Avoid must be bool"),
])
def test_clear_errors(text: str, words: str) -> None:
    with pytest.raises(ParseError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_derpmap(text)


def test_wgc_quic_port_field() -> None:
    """wgc's own node field (docs/derp-quic.md): parsed case-insensitively, absent means 0 (no QUIC), encoded
    under its own name only when set, and no other field changes meaning."""
    text = ('{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "5a", "RegionID": 5, "HostName": "h", '
            '"DERPPort": 8443, "wgcquicport": 8443}, {"Name": "5b", "RegionID": 5, "HostName": "h2"}]}}}')
    warnings: list[str] = []
    a, b = parse_derpmap(text, warnings).regions[5].nodes
    assert (a.wgc_quic_port, a.derp_port, b.wgc_quic_port) == (8443, 8443, 0) and warnings == []
    assert a.to_dict()["WgcQUICPort"] == 8443 and "WgcQUICPort" not in b.to_dict()
    assert parse_derpmap(json.dumps({"Regions": {"5": parse_derpmap(text).regions[5].to_dict()}})) == parse_derpmap(text)


def test_round_trip_example() -> None:
    m = parse_derpmap(EXAMPLE)
    again = parse_derpmap(m.to_json())
    assert again == m
    assert json.loads(m.to_json())["omitDefaultRegions"] is True


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=12)


@st.composite
def derp_maps(draw) -> DerpMap:
    regions = {}
    used: set[str] = set()
    for rid in draw(st.sets(st.integers(1, 2**53 - 1), max_size=4)):
        nodes = []
        for i in range(draw(st.integers(0, 3))):
            name = f"{rid}{chr(97 + i)}"
            used.add(name)
            nodes.append(DerpNode(
                name=name, region_id=rid, host_name=draw(names),
                ipv4=draw(st.sampled_from(["", "none", "192.0.2.1", "127.0.0.1"])),
                ipv6=draw(st.sampled_from(["", "none", "2001:db8::1"])),
                stun_port=draw(st.integers(-1, 65535)), stun_only=draw(st.booleans()),
                derp_port=draw(st.integers(0, 65535)), insecure_for_tests=draw(st.booleans()),
                can_port80=draw(st.booleans()), stun_test_ip=draw(st.sampled_from(["", "127.0.0.1"])),
                cert_name=draw(st.sampled_from(["", "derp.example", "sha256-raw:" + "0f" * 32])),
                wgc_quic_port=draw(st.integers(0, 65535))))
        regions[rid] = DerpRegion(
            region_id=rid, region_code=draw(names), region_name=draw(st.text(max_size=10)),
            nodes=tuple(nodes), avoid=draw(st.booleans()), no_measure_no_home=draw(st.booleans()),
            latitude=draw(st.floats(-90, 90)), longitude=draw(st.floats(-180, 180)))
    return DerpMap(regions=regions, omit_default_regions=draw(st.booleans()))


@given(derp_maps())
def test_round_trip_property(m: DerpMap) -> None:
    assert parse_derpmap(m.to_json()) == m


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["Regions", "RegionID", "Nodes", "Name", "HostName", "1", "2", "x", "DERPPort",
                         "HomeParams", "RegionScore", "omitDefaultRegions", "STUNPort", "WgcQUICPort"]), inner,
        max_size=5),
    max_leaves=20)


@given(json_values)
def test_garbage_json_raises_only_parse_error(value) -> None:
    try:
        parse_derpmap(json.dumps(value))
    except ParseError:
        pass


@given(st.binary(max_size=200))
def test_garbage_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        parse_derpmap(data)
    except ParseError:
        pass


# -- loader ---------------------------------------------------------------------------------------------

def test_load_from_file(tmp_path) -> None:
    path = tmp_path / "map.json"
    path.write_text(EXAMPLE)
    assert set(load_derpmap(str(path)).regions) == {900, 901}
    with pytest.raises(UsageError, match="cannot read DERP map file"):
        load_derpmap(str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="no DERP map source"):
        load_derpmap("")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/derpmap/default":
            body = EXAMPLE.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server(tmp_path):
    servers = []

    def start(tls: bool):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        ca = None
        if tls:
            ca = make_ca()
            pair = make_cert(["127.0.0.1", "localhost"], ca)
            write_pair(pair, str(tmp_path / "s.crt"), str(tmp_path / "s.key"))
            (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
            srv.socket = server_context(str(tmp_path / "s.crt"), str(tmp_path / "s.key")).wrap_socket(
                srv.socket, server_side=True)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        servers.append((srv, thread))
        return srv.server_address[1]

    try:
        yield start
    finally:
        for srv, thread in servers:
            srv.shutdown()
            srv.server_close()
            thread.join(5)


@pytest.mark.timeout(20)
def test_load_from_http_url(http_server) -> None:
    port = http_server(False)
    assert 901 in load_derpmap(f"http://127.0.0.1:{port}/derpmap/default").regions
    with pytest.raises(UsageError, match="HTTP 404"):
        load_derpmap(f"http://127.0.0.1:{port}/nope")


@pytest.mark.timeout(20)
def test_load_from_https_with_private_ca(http_server, tmp_path) -> None:
    port = http_server(True)
    url = f"https://127.0.0.1:{port}/derpmap/default"
    with pytest.raises(UsageError, match="cannot fetch DERP map"):
        load_derpmap(url, timeout=3)  # not trusted by the system store
    assert 900 in load_derpmap(url, ca_file=str(tmp_path / "ca.pem")).regions
    assert 900 in load_derpmap(url, insecure=True).regions
    with pytest.raises(UsageError, match="cannot load CA file"):
        load_derpmap(url, ca_file=str(tmp_path / "nope.pem"))


@pytest.mark.timeout(20)
def test_load_unreachable_url() -> None:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(UsageError, match=f"127.0.0.1:{port}"):
        load_derpmap(f"http://127.0.0.1:{port}/derpmap/default", timeout=2)
