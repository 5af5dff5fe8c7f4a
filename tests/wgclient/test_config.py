"""wgclient.config: the wg-quick grammar, clear errors naming file/line/key, round trips, garbage never escapes."""
from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, strategies as st

from wgclient import keys
from wgclient.config import InterfaceConfig, PeerConfig, format_config, load_config, parse_config
from wgclient.errors import ConfigError, ParseError, UsageError

PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
PUB2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="

GOOD = f"""\
# a comment
[Interface]
PrivateKey = {PRIV}
Address = 10.0.0.1/24, fd00::1/64
Address = 10.9.0.1
ListenPort = 51820
MTU = 1380
FwMark = 0x1234
DNS = 10.0.0.53, example.internal
PostUp = iptables -A FORWARD -i %i -j ACCEPT   # trailing comment
PostUp = echo second

[Peer]
# Name = laptop
PublicKey = {PUB}
PresharedKey = {PSK}
AllowedIPs = 10.0.0.2/32, 10.1.2.3/16
AllowedIPs = fd00::2
Endpoint = 192.0.2.7:51821
PersistentKeepalive = 25

[peer]
publickey={PUB2}
allowedips = 0.0.0.0/0, ::/0
endpoint = [2001:db8::1]:1234
PersistentKeepalive = off
"""


def parse(text: str, path: str = "wg0.conf", **kw) -> InterfaceConfig:
    return parse_config(text, path, **kw)


def test_full_file():
    c = parse(GOOD)
    assert c.name == "wg0" and c.path == "wg0.conf"
    assert c.private_key == keys.key_from_base64(PRIV)
    assert [str(a) for a in c.addresses] == ["10.0.0.1/24", "fd00::1/64", "10.9.0.1/32"]
    assert (c.listen_port, c.mtu, c.fwmark, c.table) == (51820, 1380, 0x1234, "auto")
    assert c.dns == ("10.0.0.53", "example.internal")
    assert c.post_up == ("iptables -A FORWARD -i %i -j ACCEPT", "echo second")
    a, b = c.peers
    assert a == PeerConfig(public_key=keys.key_from_base64(PUB), preshared_key=keys.key_from_base64(PSK),
                           allowed_ips=(ipaddress.ip_network("10.0.0.2/32"), ipaddress.ip_network("10.1.0.0/16"),
                                        ipaddress.ip_network("fd00::2/128")),
                           endpoint=("192.0.2.7", 51821), endpoint_text="192.0.2.7:51821",
                           persistent_keepalive=25, name="laptop")
    assert a.line == 13 and b.line == 22
    assert b.endpoint == ("2001:db8::1", 1234) and b.persistent_keepalive == 0 and b.preshared_key is None
    assert [str(n) for n in b.allowed_ips] == ["0.0.0.0/0", "::/0"]


def test_defaults():
    c = parse(f"[Interface]\nPrivateKey={PRIV}\n")
    assert (c.listen_port, c.mtu, c.fwmark, c.table, c.peers, c.addresses) == (None, None, 0, "auto", (), ())
    assert not c.save_config


def test_repr_hides_secrets():
    c = parse(GOOD)
    text = repr(c)
    for secret in (PRIV, PSK, keys.key_from_base64(PRIV).hex(), repr(keys.key_from_base64(PRIV)),
                   repr(keys.key_from_base64(PSK))):
        assert secret not in text
    assert "<hidden>" in text and PUB in text


def test_zero_psk_is_none():
    c = parse(f"[Interface]\nPrivateKey={PRIV}\n[Peer]\nPublicKey={PUB}\nPresharedKey={'A' * 43}=\n")
    assert c.peers[0].preshared_key is None


def test_hostname_endpoint_uses_resolver():
    seen = []

    def resolve(host, port):
        seen.append((host, port))
        return "198.51.100.4", port

    c = parse(f"[Interface]\nPrivateKey={PRIV}\n[Peer]\nPublicKey={PUB}\nEndpoint = vpn.example.com:443\n",
              resolve=resolve)
    assert seen == [("vpn.example.com", 443)]
    assert c.peers[0].endpoint == ("198.51.100.4", 443) and c.peers[0].endpoint_text == "vpn.example.com:443"


def test_resolver_failure_is_config_error():
    def resolve(host, port):
        raise OSError(-2, "Name or service not known")

    with pytest.raises(ConfigError, match=r"wg0.conf:4: Endpoint: cannot resolve 'nope.invalid'"):
        parse(f"[Interface]\nPrivateKey={PRIV}\n[Peer]\nEndpoint=nope.invalid:1\nPublicKey={PUB}\n", resolve=resolve)


BAD = [
    # (text after a valid [Interface] header+key on lines 1-2, line, key, message fragment)
    (f"[Peer]\nPublicKey = {PUB[:-2]}=\n", 4, "PublicKey", "not a valid base64 key of 32 bytes"),
    (f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.0.0.300/32\n", 5, "AllowedIPs", "not a valid CIDR"),
    (f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.0.0.0/33\n", 5, "AllowedIPs", "not a valid CIDR"),
    (f"[Peer]\nPublicKey = {PUB}\nEndpoint = 1.2.3.4:70000\n", 5, "Endpoint", "out of range"),
    (f"[Peer]\nPublicKey = {PUB}\nEndpoint = 1.2.3.4\n", 5, "Endpoint", "not host:port"),
    (f"[Peer]\nPublicKey = {PUB}\nEndpoint = [::1:5\n", 5, "Endpoint", "not [IPv6]:port"),
    (f"[Peer]\nPublicKey = {PUB}\n[Peer]\nPublicKey = {PUB}\n", 6, "PublicKey", "duplicate peer"),
    (f"[Peer]\nPublicKey = {PUB}\nPersistentKeepalive = 65536\n", 5, "PersistentKeepalive", "out of range"),
    (f"[Peer]\nPublicKey = {PUB}\nFoo = bar\n", 5, "Foo", "unknown key in [Peer]"),
    (f"[Peer]\nAllowedIPs = 10.0.0.1/32\n", 3, "PublicKey", "missing"),
    ("ListenPort = 65536\n", 3, "ListenPort", "out of range"),
    ("ListenPort = -1\n", 3, "ListenPort", "not a number"),
    ("ListenPort = 5\nListenPort = 6\n", 4, "ListenPort", "given twice"),
    ("MTU = 100\n", 3, "MTU", "out of range"),
    ("Address = fd00::1/64\nMTU = 1000\n", 4, "MTU", "at least 1280"),
    ("Address = 10.0.0.1/40\n", 3, "Address", "not an IP address"),
    ("Table = nope\n", 3, "Table", "must be off, auto, main"),
    ("SaveConfig = yes\n", 3, "SaveConfig", "'yes' is neither true nor false"),
    ("Bogus = 1\n", 3, "Bogus", "unknown key in [Interface]"),
    ("[Interface]\n", 3, None, "a second [Interface] section"),
    ("[Server]\n", 3, None, "unknown section"),
    ("just words\n", 3, None, "expected 'Key = Value'"),
    (f"[Peer]\nPublicKey = {keys.key_to_base64(keys.public_key(keys.key_from_base64(PRIV)))}\n", 4, "PublicKey",
     "own public key"),
]


@pytest.mark.parametrize("tail,line,key,fragment", BAD)
def test_errors_name_file_line_and_key(tail, line, key, fragment):
    with pytest.raises(ConfigError) as info:
        parse(f"[Interface]\nPrivateKey = {PRIV}\n{tail}", "/etc/wgc/wg0.conf")
    err = info.value
    assert (err.path, err.line, err.key) == ("/etc/wgc/wg0.conf", line, key)
    assert fragment in str(err)
    assert str(err).startswith(f"/etc/wgc/wg0.conf:{line}: " + (f"{key}: " if key else ""))
    assert PRIV not in str(err)


def test_message_format_example():
    with pytest.raises(ConfigError) as info:
        parse(f"[Interface]\nPrivateKey = {PRIV}\n\n\n\n[Peer]\nPublicKey = abc\n")
    assert str(info.value) == "wg0.conf:7: PublicKey: not a valid base64 key of 32 bytes"
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize("text,message", [
    ("", "no [Interface] section"),
    ("[Interface]\nAddress = 10.0.0.1/24\n", "PrivateKey: missing"),
    ("PrivateKey = x\n", "outside of an [Interface] or [Peer] section"),
])
def test_structural_errors(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(text)


@pytest.mark.parametrize("path", ["this-name-is-too-long.conf", "a b.conf", "/x/.conf", "wg:0.conf", "dir/"])
def test_bad_interface_names(path):
    with pytest.raises(ConfigError, match="interface name"):
        parse(f"[Interface]\nPrivateKey={PRIV}\n", path)


def test_hostname_without_resolver_is_error():
    with pytest.raises(ConfigError, match="Endpoint: host name 'h.example' given but no resolver"):
        parse(f"[Interface]\nPrivateKey={PRIV}\n[Peer]\nPublicKey={PUB}\nEndpoint=h.example:1\n")


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.conf"))
    p = tmp_path / "wg1.conf"
    p.write_bytes(b"[Interface]\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(p))
    p.write_text(GOOD)
    assert load_config(str(p)).name == "wg1"


# ---- properties ----

keys32 = st.binary(min_size=32, max_size=32)
v4nets = st.builds(lambda a, n: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{n}", strict=False),
                   st.integers(0, 2**32 - 1), st.integers(0, 32))
v6nets = st.builds(lambda a, n: ipaddress.ip_network(f"{ipaddress.IPv6Address(a)}/{n}", strict=False),
                   st.integers(0, 2**128 - 1), st.integers(0, 128))
ifaces = st.one_of(
    st.builds(lambda a, n: ipaddress.ip_interface(f"{ipaddress.IPv4Address(a)}/{n}"), st.integers(1, 2**32 - 1),
              st.integers(1, 32)),
    st.builds(lambda a, n: ipaddress.ip_interface(f"{ipaddress.IPv6Address(a)}/{n}"), st.integers(1, 2**128 - 1),
              st.integers(1, 128)))
endpoints = st.one_of(
    st.none(),
    st.builds(lambda a, p: (str(ipaddress.IPv4Address(a)), p), st.integers(0, 2**32 - 1), st.integers(1, 65535)),
    st.builds(lambda a, p: (str(ipaddress.IPv6Address(a)), p), st.integers(0, 2**128 - 1), st.integers(1, 65535)))
cmds = st.text(st.characters(blacklist_characters="#\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", blacklist_categories=("Cs",)),
               min_size=1, max_size=20).map(str.strip).filter(bool)


@st.composite
def configs(draw):
    priv = keys.clamp(draw(keys32))
    own = keys.public_key(priv)
    pubs = draw(st.lists(keys32.filter(lambda k: k != own), unique=True, max_size=4))
    peers = []
    for pk in pubs:
        ep = draw(endpoints)
        peers.append(PeerConfig(
            public_key=pk, preshared_key=draw(st.one_of(st.none(), keys32.filter(lambda k: any(k)))),
            allowed_ips=tuple(dict.fromkeys(draw(st.lists(st.one_of(v4nets, v6nets), max_size=5)))),
            endpoint=ep, endpoint_text=None if ep is None else (f"[{ep[0]}]:{ep[1]}" if ":" in ep[0] else f"{ep[0]}:{ep[1]}"),
            persistent_keepalive=draw(st.integers(0, 65535)),
            name=draw(st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9 -]{0,10}[a-z0-9]", fullmatch=True))),
            derp_region=draw(st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.-]{1,10}", fullmatch=True)))))
    addrs = tuple(dict.fromkeys(draw(st.lists(ifaces, max_size=4))))
    return InterfaceConfig(
        name="wgx", path="dir/wgx.conf", private_key=priv, addresses=addrs,
        listen_port=draw(st.one_of(st.none(), st.integers(0, 65535))),
        mtu=draw(st.one_of(st.none(), st.integers(1280, 65535))), fwmark=draw(st.integers(0, 2**32 - 1)),
        table=draw(st.sampled_from(["auto", "off", "main", "1234"])), save_config=draw(st.booleans()),
        pre_up=tuple(draw(st.lists(cmds, max_size=2))), post_down=tuple(draw(st.lists(cmds, max_size=2))),
        dns=tuple(draw(st.lists(st.from_regex(r"[a-z0-9.]{1,12}", fullmatch=True), max_size=3))),
        peers=tuple(peers))


@given(configs())
def test_format_parse_round_trip(cfg):
    assert parse_config(format_config(cfg), cfg.path) == cfg


LINES = [f"PrivateKey = {PRIV}", f"PublicKey = {PUB}", "[Interface]", "[Peer]", "AllowedIPs = 10.0.0.0/8",
         "Endpoint = [::1]:5", "ListenPort = 1", "MTU = 1500", "# Name = x", "Address = fd00::1/64", "= =", "[",
         f"PresharedKey = {PSK}", "FwMark = off", "Table = 7", "PersistentKeepalive = 9",
         "DerpRegion = 901", "DerpRegion = fra", "DerpRegion = a b", "Name = my laptop", "SaveConfig = true",
         "SaveConfig = False", "DNS = 1.1.1.1, example.com"]


@given(st.lists(st.one_of(st.sampled_from(LINES), st.text(max_size=40)), max_size=12))
def test_garbage_raises_only_config_error(lines):
    try:
        cfg = parse("\n".join(lines))
    except ConfigError:
        return
    assert isinstance(cfg, InterfaceConfig)


@given(st.binary(max_size=200))
def test_garbage_bytes_from_disk_raise_only_config_error(tmp_path_factory, data):
    path = os.path.join(str(tmp_path_factory.getbasetemp()), "g0.conf")
    with open(path, "wb") as f:
        f.write(data)
    try:
        load_config(path)
    except (ConfigError, ParseError):
        pass


def test_derp_region_and_name_keys():
    cfg = parse(f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nName =  my laptop \n"
                f"DerpRegion = fra\n[Peer]\nPublicKey = {PUB2}\n# Name = other\nDerpRegion = 901\n")
    a, b = cfg.peers
    assert (a.name, a.derp_region, a.derp_region_line) == ("my laptop", "fra", 6)
    assert (b.name, b.derp_region) == ("other", "901")
    assert "DerpRegion = fra" in format_config(cfg)


@pytest.mark.parametrize("value", ["fr/a", "x" * 65, ""])
def test_bad_derp_region_names_line_and_key(value):
    with pytest.raises(ConfigError) as e:
        parse(f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nDerpRegion = {value}\n")
    assert str(e.value).startswith("wg0.conf:5: DerpRegion:")


def test_derp_region_hints_resolve_against_the_map():
    from derp.derpmap import parse_derpmap
    from wgclient.derpregions import find_region, region_hints
    dm = parse_derpmap('{"Regions": {"901": {"RegionID": 901, "RegionCode": "fra", "Nodes": []},'
                       ' "902": {"RegionID": 902, "RegionCode": "ams", "Nodes": []}}}')
    assert find_region(dm, "901") == 901 and find_region(dm, "AMS") == 902 and find_region(dm, "nyc") is None
    cfg = parse(f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nDerpRegion = ams\n"
                f"[Peer]\nPublicKey = {PUB2}\n")
    assert region_hints(cfg, dm) == {keys.key_from_base64(PUB): 902}
    bad = parse(f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nDerpRegion = 7\n")
    with pytest.raises(ConfigError, match=r"wg0.conf:5: DerpRegion: no region '7' in the DERP map"):
        region_hints(bad, dm)
