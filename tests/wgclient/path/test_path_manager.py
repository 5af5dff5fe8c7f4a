"""Path manager rules one at a time, with hand-stepped time: disco authentication and drops, ping/pong/
CallMeMaybe handling, trust and its expiry, ping timeouts, CLI pings, region choice and idle regions,
better_addr, the home tracker, and a property that no disco input makes the manager raise."""
from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, strategies as st

from natprobe.report import Report
from wgclient import keys
from wgclient.errors import UsageError
from wgclient.path import disco
from wgclient.path.discokeys import derive_pair
from wgclient.path.home import HomeTracker
from wgclient.path.manager import NetInfo, PathConfig, PathManager
from wgclient.path.peerstate import (CloseRegion, ConnectRegion, PathChanged, PathState, PingResult, Route,
                                     SendDisco, SetHome, better_addr)

KA = keys.clamp(bytes(range(32)))
KB = keys.clamp(bytes(range(7, 39)))
A, B = keys.public_key(KA), keys.public_key(KB)
B_ADDR = ("198.51.100.2", 40000)
A_ADDR = ("198.51.100.1", 40000)


def manager(private=KA, peer=B, **kw) -> PathManager:
    m = PathManager(private, random_bytes=random.Random(1).randbytes, **kw)
    m.add_peer(peer)
    m.set_regions({1: "fra", 2: "ams"}, 0.0)
    return m


def sends(outputs) -> list[SendDisco]:
    return [o for o in outputs if isinstance(o, SendDisco)]


def opened(send: SendDisco, private=KB, sender=A):
    """What the peer reads from a SendDisco (opened with its own derived keys)."""
    return disco.parse_message(derive_pair(private, sender).box.open(send.packet))


def from_b(message, nonce=b"n" * 24) -> bytes:
    return derive_pair(KB, A).box.seal(message.encode(), nonce)


def direct(m: PathManager, now: float = 1.0) -> bytes:
    """Make the path to B direct: B's CallMeMaybe, A's pings, B's pong. Returns the TxID."""
    out = m.on_disco(from_b(disco.CallMeMaybe((B_ADDR,))), now, region=1, derp_src=B)
    ping = next(s for s in sends(out) if s.addr == B_ADDR)
    tx_id = opened(ping).tx_id
    m.on_disco(from_b(disco.Pong(tx_id, A_ADDR)), now + 0.02, addr=B_ADDR)
    return tx_id


def test_starts_relayed_in_home_region_and_connects_it():
    m = PathManager(KA, random_bytes=random.Random(1).randbytes)
    m.add_peer(B)
    out = m.set_regions({2: "ams", 1: "fra"}, 0.0)
    assert SetHome(1) in out and ConnectRegion(1) in out
    assert m.route(B, 0.0) == Route(None, 1)
    changed = [o for o in out if isinstance(o, PathChanged)]
    assert changed and changed[0].state is PathState.RELAY and changed[0].route == Route(None, 1)
    assert m.route(b"x" * 32, 0.0) == Route()


def test_messages_from_unknown_keys_and_garbage_are_dropped_and_counted():
    m = manager()
    stranger = keys.clamp(bytes(range(60, 92)))
    packet = derive_pair(stranger, A).box.seal(disco.Ping(b"t" * 12).encode(), b"n" * 24)
    assert m.on_disco(packet, 1.0, addr=B_ADDR) == []
    tampered = bytearray(from_b(disco.Ping(b"t" * 12)))
    tampered[-1] ^= 1
    assert m.on_disco(bytes(tampered), 1.0, addr=B_ADDR) == []
    assert m.on_disco(b"hello", 1.0, addr=B_ADDR) == []
    assert m.drops == {"unknown disco key": 1, "bad box or body": 1, "not disco": 1}
    # A box sealed by us (reflected back) carries our key, not the peer's: unknown.
    ours = derive_pair(KA, B).box.seal(disco.Ping(b"t" * 12).encode(), b"n" * 24)
    assert m.on_disco(ours, 1.0, addr=B_ADDR) == []
    assert m.drops["unknown disco key"] == 2


def test_call_me_maybe_only_over_derp_from_the_peer_itself():
    m = manager()
    cmm = from_b(disco.CallMeMaybe((B_ADDR,)))
    assert m.on_disco(cmm, 1.0, addr=B_ADDR) == []
    assert m.on_disco(cmm, 1.0, region=1, derp_src=b"\x01" * 32) == []
    assert m.drops == {"CallMeMaybe not via DERP": 1, "DERP source is not the peer": 1}
    assert not m.peers[B].candidates


def test_ping_over_udp_gets_pong_and_a_ping_back():
    m = manager()
    out = m.on_disco(from_b(disco.Ping(b"t" * 12, B)), 1.0, addr=("::ffff:198.51.100.2", 40000))
    msgs = [(s.addr, s.region, opened(s)) for s in sends(out)]
    assert (B_ADDR, None, disco.Pong(b"t" * 12, B_ADDR)) in msgs
    back = [msg for addr, _, msg in msgs if isinstance(msg, disco.Ping)]
    assert len(back) == 1 and back[0].node_key == A
    assert B_ADDR in m.peers[B].candidates
    # The same ping again (it may come by two paths): no second pong, no second ping within 1 s.
    again = m.on_disco(from_b(disco.Ping(b"t" * 12, B), b"m" * 24), 1.5, addr=B_ADDR)
    assert sends(again) == []
    # A ping claiming another node key is dropped.
    assert m.on_disco(from_b(disco.Ping(b"u" * 12, A)), 2.0, addr=B_ADDR) == []
    assert m.drops["ping node key is not the peer's"] == 1


def test_ping_over_derp_gets_pong_over_derp_with_magic_source():
    m = manager()
    out = m.on_disco(from_b(disco.Ping(b"t" * 12, B)), 1.0, region=2, derp_src=B)
    [pong] = [s for s in sends(out) if isinstance(opened(s), disco.Pong)]
    assert pong.region == 2 and pong.addr is None
    assert opened(pong) == disco.Pong(b"t" * 12, ("127.3.3.40", 2))
    assert m.route(B, 1.0) == Route(None, 2)  # the peer reached us in region 2: reply there


def test_call_me_maybe_pings_every_candidate_at_once():
    m = manager()
    eps = (B_ADDR, ("10.0.2.2", 41641), ("fe80::1", 41641), ("0.0.0.0", 1), ("224.0.0.1", 1), ("10.0.2.3", 0))
    out = m.on_disco(from_b(disco.CallMeMaybe(eps)), 1.0, region=1, derp_src=B)
    pinged = {s.addr for s in sends(out) if isinstance(opened(s), disco.Ping)}
    assert pinged == {B_ADDR, ("10.0.2.2", 41641)}  # IPv6 link-local, unspecified, multicast, port 0 ignored
    # The next CallMeMaybe replaces the list; candidates only it had are gone.
    m.on_disco(from_b(disco.CallMeMaybe((B_ADDR,)), b"2" * 24), 2.0, region=1, derp_src=B)
    assert set(m.peers[B].candidates) == {B_ADDR}
    # A flood of endpoints from the (authenticated) peer is bounded.
    many = tuple(("192.0.2.1", port) for port in range(1, 200))
    out = m.on_disco(from_b(disco.CallMeMaybe(many), b"3" * 24), 3.0, region=1, derp_src=B)
    assert len(m.peers[B].candidates) == 32 and len(sends(out)) == 32


def test_pong_makes_direct_then_trust_lapses_then_timeout_clears():
    m = manager()
    direct(m, 1.0)
    assert m.route(B, 1.1) == Route(B_ADDR, None)
    assert m.peers[B].state is PathState.DIRECT
    assert m.next_deadline() == pytest.approx(1.02 + 6.5)
    out = m.on_timer(1.02 + 6.5)
    assert [o.state for o in out if isinstance(o, PathChanged)] == [PathState.LAPSING]
    assert m.route(B, 7.6) == Route(B_ADDR, 1)  # both at once: no gap
    # A heartbeat ping to the untrusted best address that times out clears it: DERP only.
    m.on_data_sent(B, 8.0)
    out = m.on_timer(11.0)
    assert any(s.addr == B_ADDR for s in sends(out))
    out = m.on_timer(16.1)
    assert [o.state for o in out if isinstance(o, PathChanged)] == [PathState.RELAY]
    assert m.route(B, 16.1) == Route(None, 1)
    assert "relayed via DERP region" in m.why(B, 16.1)


def test_pong_for_unknown_txid_and_pong_via_derp_do_not_change_path():
    m = manager()
    m.on_disco(from_b(disco.Pong(b"z" * 12, A_ADDR)), 1.0, addr=B_ADDR)
    assert m.drops == {"pong for unknown TxID": 1}
    out = m.ping(B, 2.0)
    [via_derp] = [s for s in sends(out) if s.region == 1 and isinstance(opened(s), disco.Ping)]
    # an idle peer is also asked to punch (as `tailscale ping` does)
    assert any(isinstance(opened(s), disco.CallMeMaybe) for s in sends(out) if s.region == 1)
    out = m.on_disco(from_b(disco.Pong(opened(via_derp).tx_id, ("127.3.3.40", 1))), 2.05, region=1, derp_src=B)
    [result] = [o for o in out if isinstance(o, PingResult)]
    assert result.region == 1 and result.addr is None and result.latency == pytest.approx(0.05)
    assert m.route(B, 2.1) == Route(None, 1)


def test_cli_ping_direct_result():
    m = manager()
    direct(m, 1.0)
    out = m.ping(B, 2.0)
    [s] = sends(out)
    assert s.addr == B_ADDR  # trusted: only the direct path
    out = m.on_disco(from_b(disco.Pong(opened(s).tx_id, A_ADDR)), 2.003, addr=B_ADDR)
    [result] = [o for o in out if isinstance(o, PingResult)]
    assert result.addr == B_ADDR and result.latency == pytest.approx(0.003)
    with pytest.raises(UsageError):
        m.ping(b"q" * 32, 2.0)


def test_data_sent_starts_discovery_with_call_me_maybe_and_node_info():
    m = manager()
    m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}, True, False, (A_ADDR,)), 0.5)
    m.set_local_endpoints([("10.0.1.2", 41641)], 0.5)
    out = m.on_data_sent(B, 1.0)
    over_derp = [opened(s) for s in sends(out) if s.region == 1]
    assert disco.CallMeMaybe((A_ADDR, ("10.0.1.2", 41641))) in over_derp
    assert disco.NodeInfo(1, disco.NI_UDP | disco.NI_MAPPING_KNOWN) in over_derp
    assert m.next_deadline() <= 4.0
    assert m.on_data_sent(B, 1.1) == []  # the per-packet call is cheap once a heartbeat is armed


def test_node_info_announces_home_and_nat_facts():
    m = manager()
    m.on_disco(from_b(disco.NodeInfo(2, disco.NI_UDP | disco.NI_MAPPING_KNOWN | disco.NI_HARD_NAT)), 1.0,
               region=2, derp_src=B)
    p = m.peers[B]
    assert p.announced_home == 2 and m.route(B, 1.0) == Route(None, 2)
    m.on_netcheck(NetInfo(1, {1: 0.01}, True, True, (A_ADDR,)), 1.0)
    assert "both NATs map ports per destination" in m.why(B, 1.0)


def test_peer_gone_moves_to_next_region_and_idle_region_closes():
    m = manager()
    m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}), 0.0)
    out = m.on_peer_gone(B, 1, 1.0)
    assert m.route(B, 1.0) == Route(None, 2) and ConnectRegion(2) in out
    # Region 2 stays open while used; once the peer is found in region 1 again, 2 closes after 60 s idle.
    m.on_timer(1.5)
    m.on_wireguard_from(B, 2.0, region=1)
    assert m.route(B, 2.0) == Route(None, 1)
    assert m.next_deadline() == pytest.approx(61.5)  # 60 s after it was last needed
    assert CloseRegion(2) not in m.on_timer(61.4)
    assert CloseRegion(2) in m.on_timer(61.5)


def test_unanswered_derp_probe_skips_region():
    m = manager()
    m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}), 0.0)
    out = m.on_data_sent(B, 1.0)
    assert any(s.region == 1 and isinstance(opened(s), disco.Ping) for s in sends(out))
    m.on_timer(4.0)
    m.on_timer(6.0)  # the DERP ping of t=1 timed out: the peer is not in region 1
    assert m.route(B, 6.0) == Route(None, 2)


def test_home_failover_in_manager():
    m = manager()
    m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}), 0.0)
    out = m.on_region_down(1, 10.0)  # a relay restart gets time to reconnect before the home moves
    assert m.home.home == 1 and not [o for o in out if isinstance(o, SetHome)]
    assert m.next_deadline() == pytest.approx(12.0)
    out = m.on_timer(12.0)
    assert SetHome(2) in out and m.route(B, 12.0) == Route(None, 2)
    # netcheck still naming the dead region does not bring it back while it is down.
    assert SetHome(1) not in m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}), 13.0)
    out = m.on_region_up(1, 20.0)
    assert m.home.home == 2  # no switch back without netcheck
    assert SetHome(1) in m.on_netcheck(NetInfo(1, {1: 0.01, 2: 0.02}), 21.0)


def test_home_tracker_rules():
    h = HomeTracker(2.0)
    assert h.set_regions({3: "c", 1: "a", 2: "b"}) and h.home == 1  # nothing measured: map order
    assert h.on_netcheck(2, {1: 0.03, 2: 0.01, 3: 0.02}) and h.home == 2
    assert not h.on_netcheck(0, {}) and h.home == 2  # netcheck found nothing: keep
    assert h.order() == [2, 3, 1]
    h.on_down(2, 5.0)
    assert h.order() == [3, 1] and h.next_deadline() == 7.0
    assert not h.on_timer(6.9)
    assert h.on_timer(7.0) and h.home == 3
    assert not h.on_netcheck(2, {2: 0.01}) and h.home == 3  # preferred but down
    h.on_up(2)
    assert h.on_netcheck(2, {2: 0.01, 3: 0.02}) and h.home == 2
    assert h.set_regions({5: "e"}) and h.home == 5 and h.order() == [5]


def test_better_addr():
    pub1, pub2 = ("198.51.100.1", 1), ("198.51.100.2", 2)
    assert better_addr(pub1, 0.01, None, 0)
    assert not better_addr(None, 0.01, pub1, 0.01)
    assert not better_addr(pub1, 0.001, pub1, 0.01)  # same address
    assert better_addr(pub2, 0.005, pub1, 0.010)  # 50 % faster
    assert not better_addr(pub2, 0.00999, pub1, 0.010)  # < 1 %: hysteresis keeps the current one
    assert better_addr(("192.168.1.2", 3), 0.010, pub1, 0.010)  # private +20
    assert better_addr(("127.0.0.1", 3), 0.010, ("192.168.1.2", 3), 0.010)  # loopback +50
    assert better_addr(("2001:db8::1", 3), 0.010, pub1, 0.010)  # IPv6 +10
    assert not better_addr(pub1, 0.010, ("10.0.0.1", 3), 0.008)


def test_netinfo_from_natprobe_report_and_frozen_config():
    report = Report(udp=True, preferred_derp=2, region_latency={2: 0.01}, mapping_varies_by_dest_ip=True,
                    global_v4="198.51.100.1:40000", global_v6="[2001:db8::1]:41641")
    info = NetInfo.from_report(report)
    assert info.endpoints == (A_ADDR, ("2001:db8::1", 41641))
    assert info.preferred == 2 and info.mapping_varies is True and info.udp
    with pytest.raises(dataclasses.FrozenInstanceError):
        PathConfig().trust_duration = 1.0  # type: ignore[misc]
    fast = PathConfig(trust_duration=1.0)
    m = manager(config=fast)
    direct(m, 1.0)
    assert m.route(B, 2.0) == Route(B_ADDR, None) and m.route(B, 2.03) == Route(B_ADDR, 1)


def test_add_remove_peer_and_repr_hides_keys():
    m = manager()
    with pytest.raises(UsageError):
        m.add_peer(B)
    assert KA.hex() not in repr(m.peers[B]) and "box" not in repr(m.peers[B].pair)
    m.remove_peer(B)
    assert m.on_disco(from_b(disco.Ping(b"t" * 12)), 1.0, addr=B_ADDR) == []
    assert m.drops == {"unknown disco key": 1}


def test_config_endpoint_is_a_permanent_candidate():
    m = PathManager(KA, random_bytes=random.Random(1).randbytes)
    m.add_peer(B, endpoint=B_ADDR, region_hint=2)
    m.set_regions({1: "fra", 2: "ams"}, 0.0)
    assert m.route(B, 0.0) == Route(None, 2)  # the config's region hint
    out = m.on_data_sent(B, 1.0)
    assert any(s.addr == B_ADDR for s in sends(out))
    m.on_timer(100.0)
    assert B_ADDR in m.peers[B].candidates


@given(st.binary(max_size=200), st.booleans(), st.sampled_from([None, 1, 2]))
def test_no_disco_input_makes_the_manager_raise(data, sealed, region):
    m = manager()
    packet = from_b_raw(data) if sealed else data
    kw = {"region": region, "derp_src": B} if region else {"addr": B_ADDR}
    out = m.on_disco(packet, 1.0, **kw)
    assert all(isinstance(o, (SendDisco, PathChanged, ConnectRegion, CloseRegion, SetHome, PingResult)) for o in out)


def from_b_raw(payload: bytes) -> bytes:
    return derive_pair(KB, A).box.seal(payload, b"r" * 24)


def test_home_is_sticky_with_netchecks_hysteresis():
    # The runner feeds reports whose PreferredDERP natprobe.home chose with its history (netcheck.md §8).
    from natprobe.home import History, select_home
    m = manager()
    history = History()
    homes = []
    for at, lat in ((0, {1: 0.030, 2: 0.040}), (30, {1: 0.030, 2: 0.025}), (60, {1: 0.030, 2: 0.022}),
                    (90, {1: 0.030, 2: 0.012})):
        report = Report(now=1_700_000_000.0 + at, udp=True, region_latency=lat)
        history.add(report, full=True)
        history.preferred = report.preferred_derp = select_home(history, report)
        out = m.on_netcheck(NetInfo.from_report(report), float(at))
        homes.append((m.home.home, [o.region for o in out if isinstance(o, SetHome)]))
    # 5 and 8 ms faster are not enough to leave a working home; 18 ms (60 % faster) is.
    assert homes == [(1, []), (1, []), (1, []), (2, [2])]


def test_status_summary_and_logs(caplog):
    caplog.set_level("INFO", logger="wgclient.path")
    m = manager()
    assert m.status(B, 0.5)["Path"] == 'relay "fra"'
    direct(m, 1.0)
    status = m.status(B, 2.0)
    assert status["Path"] == "direct 198.51.100.2:40000" and status["CurAddr"] == "198.51.100.2:40000"
    assert status["State"] == "direct" and status["LatencySeconds"] == pytest.approx(0.02)
    assert status["Addrs"] == ["198.51.100.2:40000"] and status["Why"].startswith("direct")
    assert m.status(B, 9.0)["Path"] == 'relay "fra"' and m.status(B, 9.0)["CurAddr"] == ""
    text = caplog.text
    assert f"[peer:{keys.short(B)}] path relay -> direct" in text
    import base64
    for secret in (KA, KB):
        assert base64.b64encode(secret).decode()[:8] not in text and secret.hex()[:16] not in text


def test_ipv6_candidate_becomes_direct_and_wins_ties():
    m = manager()
    v6 = ("2001:db8::2", 41641)
    out = m.on_disco(from_b(disco.CallMeMaybe((B_ADDR, v6))), 1.0, region=1, derp_src=B)
    pings = {s.addr: opened(s).tx_id for s in sends(out) if isinstance(opened(s), disco.Ping)}
    assert set(pings) == {B_ADDR, v6}
    m.on_disco(from_b(disco.Pong(pings[B_ADDR], A_ADDR)), 1.020, addr=B_ADDR)
    m.on_disco(from_b(disco.Pong(pings[v6], ("2001:db8::1", 41641)), b"6" * 24), 1.020, addr=v6)
    # Same 20 ms latency: IPv6 gets +10 points (disco.md §7.7), so it replaces the IPv4 path.
    assert m.route(B, 1.1) == Route(v6, None)
    assert m.status(B, 1.1)["Path"] == "direct [2001:db8::2]:41641"


def test_new_endpoints_of_ours_are_announced_at_once_to_active_relayed_peers():
    m = manager()
    m.on_data_sent(B, 1.0)                     # active; first discovery sends a CallMeMaybe
    out = m.on_netcheck(NetInfo(preferred=1, latency={1: 0.01}, endpoints=()), 2.0)
    assert not any(isinstance(opened(s), disco.CallMeMaybe) for s in sends(out))   # nothing new
    out = m.on_netcheck(NetInfo(preferred=1, latency={1: 0.01}, endpoints=(A_ADDR,)), 2.5)
    [cmm] = [opened(s) for s in sends(out) if isinstance(opened(s), disco.CallMeMaybe)]
    assert A_ADDR in cmm.endpoints            # well before the 5 s retry
    out = m.set_local_endpoints([("10.0.0.1", 40000)], 3.0)
    assert any(isinstance(opened(s), disco.CallMeMaybe) for s in sends(out))
    idle = manager()                          # no traffic: nothing is sent
    assert not sends(idle.on_netcheck(NetInfo(preferred=1, endpoints=(A_ADDR,)), 2.0))


def test_new_endpoints_are_announced_even_when_candidates_were_just_pinged():
    """Lab finding: UDP came back, the peer's CallMeMaybe made us ping its candidates (dropped by our
    router's firewall), and 0.3 s later netcheck found our public address: it must go out at once,
    not wait for the candidates' 5 s ping interval."""
    m = manager()
    m.on_data_sent(B, 1.0)
    m.on_disco(from_b(disco.CallMeMaybe((B_ADDR,))), 3.0, region=1, derp_src=B)   # pings B_ADDR now
    out = m.on_netcheck(NetInfo(preferred=1, latency={1: 0.01}, endpoints=(A_ADDR,)), 3.3)
    [cmm] = [opened(s) for s in sends(out) if isinstance(opened(s), disco.CallMeMaybe)]
    assert A_ADDR in cmm.endpoints


def _run_timers(m: PathManager, until: float) -> list[tuple[float, SendDisco]]:
    """Step the manager from deadline to deadline up to `until`; every SendDisco with its time."""
    sent = []
    while (t := m.next_deadline()) is not None and t <= until:
        sent += [(t, s) for s in sends(m.on_timer(t))]
    return sent


def test_unanswered_first_round_is_retried_on_the_short_backoff_then_every_five_seconds():
    """Issue 9: the peer's CallMeMaybe brings its address; our pings get no pong (its NAT is not open
    for us yet): they are repeated 0.25, 0.5, 1 and 2 s apart, then only by the ~5 s rounds."""
    m = manager()
    m.on_data_sent(B, 0.0)
    out = m.on_disco(from_b(disco.CallMeMaybe((B_ADDR,))), 0.1, region=1, derp_src=B)
    assert [s.addr for s in sends(out) if isinstance(opened(s), disco.Ping)] == [B_ADDR]
    pings = [t for t, s in _run_timers(m, 40.0) if s.addr == B_ADDR]
    assert pings[:4] == pytest.approx([0.35, 0.85, 1.85, 3.85])
    gaps = [y - x for x, y in zip(pings[4:], pings[5:])]
    assert pings[4] - pings[3] >= 5.0 and gaps and min(gaps) >= 5.0  # the steady rounds: no new backoff


def test_backoff_stops_at_the_first_pong():
    m = manager()
    m.on_data_sent(B, 0.0)
    out = m.on_disco(from_b(disco.CallMeMaybe((B_ADDR,))), 0.1, region=1, derp_src=B)
    [t1] = [t for t, s in _run_timers(m, 0.4) if s.addr == B_ADDR]
    assert t1 == pytest.approx(0.35)
    retry = [s for s in sends(out) if s.addr == B_ADDR][0]
    m.on_disco(from_b(disco.Pong(opened(retry).tx_id, A_ADDR)), 0.45, addr=B_ADDR)
    assert m.route(B, 0.5) == Route(B_ADDR, None)
    # From here on only heartbeats (every 3 s) ping the direct address, until its trust (6.5 s) lapses
    # unanswered: that restarts discovery with the backoff.
    pings = [t for t, s in _run_timers(m, 9.0) if s.addr == B_ADDR]
    assert pings == pytest.approx([3.0, 6.0, 7.2, 7.7, 8.7])


def test_call_me_maybe_sent_before_the_peer_was_on_derp_is_sent_again_when_it_appears():
    """Issue 9: our first CallMeMaybe reached the region before the peer did (DERP drops it, PeerGone);
    when the peer turns up there (its NodeInfo), our endpoints go out at once, not at the 5 s retry."""
    m = manager()
    m.on_netcheck(NetInfo(1, {1: 0.01}, True, False, (A_ADDR,)), 0.0)
    first = m.on_data_sent(B, 0.0)
    assert any(isinstance(opened(s), disco.CallMeMaybe) for s in sends(first) if s.region == 1)
    m.on_peer_gone(B, 1, 0.05)
    _run_timers(m, 4.5)  # the backoff's retries go out and are lost as well
    out = m.on_disco(from_b(disco.NodeInfo(1, disco.NI_UDP)), 4.6, region=1, derp_src=B)
    assert disco.CallMeMaybe((A_ADDR,)) in [opened(s) for s in sends(out) if s.region == 1]
    # Heard in the region now: a later NodeInfo (e.g. its home changed) does not repeat ours.
    out = m.on_disco(from_b(disco.NodeInfo(1, disco.NI_UDP), b"2" * 24), 5.0, region=1, derp_src=B)
    assert not [s for s in sends(out) if isinstance(opened(s), disco.CallMeMaybe)]


def test_call_me_maybe_to_a_peer_already_heard_is_not_repeated_when_it_speaks():
    m = manager()
    m.on_disco(from_b(disco.NodeInfo(1, disco.NI_UDP)), 0.5, region=1, derp_src=B)  # b is on region 1
    m.on_data_sent(B, 1.0)
    out = m.on_disco(from_b(disco.Pong(b"x" * 12, ("127.3.3.40", 1))), 1.1, region=1, derp_src=B)
    assert not [s for s in sends(out) if isinstance(opened(s), disco.CallMeMaybe)]
    assert not [s for t, s in _run_timers(m, 4.0) if s.region == 1 and isinstance(opened(s), disco.CallMeMaybe)]


def test_why_right_after_start_does_not_promise_attempts_that_are_not_running():
    m = manager()
    m.on_netcheck(NetInfo(1, {1: 0.01}, True, False, (A_ADDR,)), 0.0)
    idle = m.why(B, 0.5)
    assert "nothing has been sent to the peer yet, so no hole punching is running" in idle
    assert "continue every few seconds" not in idle
    assert idle.endswith("Direct-path attempts start when traffic goes to the peer.")
    m.on_data_sent(B, 1.0)
    busy = m.why(B, 1.5)
    assert "no hole punching is running" not in busy and busy.endswith("continue every few seconds.")
    later = m.why(B, 60.0)  # 45 s without traffic: discovery stopped again
    assert "no traffic to the peer in the last 45 s" in later and "continue every few seconds" not in later
    # A peer blocked for a deeper reason, idle: the attempts still wait for traffic.
    m.on_disco(from_b(disco.NodeInfo(1, 0)), 60.0, region=1, derp_src=B)
    assert m.why(B, 60.0).endswith("blocks UDP; allow outbound UDP there to get a direct path. "
                                   "Direct-path attempts start when traffic goes to the peer.")
