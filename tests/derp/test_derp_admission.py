"""Admission beyond the allowed-keys file (derp.admission, derp.aio.admission): the pure pieces stepped by
hand (TOFU bindings, the webhook's JSON and cache, the interface's keys, the rate config), the webhook
client against a tiny HTTP server (allow, deny, timeout with and without fail-open, errors, cache), and
`wgc derper` with -verify-client-url, -verify-clients against a real control socket, and --bindings-file
across a restart."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time

import pytest
from hypothesis import given, strategies as st

from derp import protocol as P
from derp.admission import (MIN_RATE_BURST, Bindings, VerdictCache, effective_rate, encode_admit_request,
                            keys_from_status, parse_admit_response, parse_bindings, parse_rate_config)
from derp.aio.admission import Webhook as WebhookClient
from derp.aio.client import ConnectError
from derp.errors import ParseError
from derp.server import AccessList, Rejected, Relay, ServerConfig
from tests.support.control_target import ScriptedTarget, peer, sample_status
from wgclient.aio.control_server import start_control_server

from admit_support import Webhook, admitted, derper_fails
from derp_support import client, exchange, metric, new_key

pytestmark = pytest.mark.timeout(120)


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# ---- pure: bindings, webhook JSON and cache, the interface's keys, the rate config ------------------------

def test_bindings_bind_the_first_key_and_refuse_another() -> None:
    b = Bindings(max_entries=2)
    assert b.check("ip:198.51.100.1", b"A" * 32, 1000.0) == "new" and b.dirty
    assert b.check("ip:198.51.100.1", b"A" * 32, 1001.0) == "same"
    assert b.check("ip:198.51.100.1", b"B" * 32, 1002.0) == "conflict"
    assert b.check("ip:198.51.100.2", b"B" * 32, 1003.0) == "new"
    assert b.check("ip:198.51.100.3", b"C" * 32, 1004.0) == "full"   # admitted unbound, never locked out
    again = Bindings(parse_bindings(b.encode()))
    assert not b.dirty and again.entries == {"ip:198.51.100.1": (b"A" * 32, 1000), "ip:198.51.100.2": (b"B" * 32, 1003)}


@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode) |
       st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=50),
                                                       st.dictionaries(st.text(max_size=5), st.text(max_size=50))),
                       max_size=4).map(lambda d: json.dumps({"version": 1, "bindings": d}).encode()))
def test_bindings_file_garbage_raises_only_parse_error(data) -> None:
    try:
        parse_bindings(data)
    except ParseError:
        pass


def test_finish_admission_refuses_a_rebound_identity_and_counts_it() -> None:
    relay = Relay(bytes(32), ServerConfig(open_relay=True), AccessList(None), lambda: 0.5)
    relay.bindings = Bindings()
    relay.finish_admission(b"A" * 32, "ip:192.0.2.1", 1.0)
    relay.finish_admission(b"B" * 32, None, 1.0)                 # no identity: not bound
    with pytest.raises(Rejected, match="bound to another key"):
        relay.finish_admission(b"B" * 32, "ip:192.0.2.1", 2.0)
    assert relay.refused == {"binding_conflict": 1}


def test_access_list_needs_both_sets_that_are_given() -> None:
    acl = AccessList(frozenset({b"A" * 32, b"B" * 32}), local=frozenset({b"B" * 32, b"C" * 32}))
    assert [acl.allows(k * 32) for k in (b"A", b"B", b"C")] == [False, True, False]
    assert acl.refusal(b"A" * 32).counter == "verify_clients" and acl.refusal(b"C" * 32).counter == "acl"


def test_admit_request_is_tailscales_json() -> None:
    assert json.loads(encode_admit_request(bytes(range(32)), "198.51.100.7")) == {
        "NodePublic": "nodekey:" + bytes(range(32)).hex(), "Source": "198.51.100.7"}


@pytest.mark.parametrize("body, allow", [(b'{"Allow": true}', True), (b'{"Allow":false}', False),
                                         (b'{"allow": true}', True), (b"{}", False), (b' {"Allow": true} junk', True),
                                         (b'{"Allow": true, "Note": 1}', True)])
def test_admit_response(body, allow) -> None:
    assert parse_admit_response(body) is allow


@given(st.binary(max_size=200) | st.sampled_from([b'{"Allow": "yes"}', b"[true]", b"null", b'{"Allow": 1}']))
def test_admit_response_garbage_raises_only_parse_error(body) -> None:
    try:
        assert parse_admit_response(body) in (True, False)
    except ParseError:
        pass


def test_verdict_cache_in_stepped_time() -> None:
    cache = VerdictCache(30.0, max_entries=2)
    cache.put(b"A" * 32, "192.0.2.1", True, 100.0)
    assert cache.get(b"A" * 32, "192.0.2.1", 129.9) is True and cache.get(b"A" * 32, "192.0.2.2", 110.0) is None
    assert cache.get(b"A" * 32, "192.0.2.1", 130.0) is None           # expired
    for i in range(3):
        cache.put(bytes([i]) * 32, "192.0.2.1", False, 200.0 + i)
    assert len(cache.entries) == 2 and cache.get(bytes([0]) * 32, "192.0.2.1", 203.0) is None   # oldest went
    off = VerdictCache(0)
    off.put(b"A" * 32, "192.0.2.1", True, 0.0)
    assert off.get(b"A" * 32, "192.0.2.1", 0.0) is None


def test_the_interfaces_keys_from_its_status_reply() -> None:
    line = json.dumps({"ok": True, "status": sample_status()}).encode() + b"\n"
    assert keys_from_status(line) == {bytes([n]) * 32 for n in (1, 2, 3, 4, 5)}
    for bad in (b'{"ok": false, "error": "boom"}\n', b"{}", b'{"ok": true, "status": {"peers": [{}]}}'):
        with pytest.raises(ParseError):
            keys_from_status(bad)


@given(st.binary(max_size=300))
def test_status_reply_garbage_raises_only_parse_error(data) -> None:
    try:
        keys_from_status(data)
    except ParseError:
        pass


def test_rate_config_as_derper() -> None:
    assert parse_rate_config(b'{"PerClientRateLimitBytesPerSec": 100000, "PerClientRateBurstBytes": 200000}') == \
        (100000, 200000)
    assert parse_rate_config(b"{}") == (0, 0)
    assert effective_rate(100000, 10) == (100000, MIN_RATE_BURST) and effective_rate(0, 99) == (0, 0)
    for bad in (b"[]", b'{"PerClientRateLimitBytesPerSec": -1}', b'{"PerClientRateBurstBytes": "1"}', b"x"):
        with pytest.raises(ParseError):
            parse_rate_config(bad)


# ---- the webhook client against a tiny HTTP server ---------------------------------------------------------

KEY_A, KEY_B = b"A" * 32, b"B" * 32


def test_webhook_allow_deny_cache_and_request() -> None:
    async def main():
        hook = await Webhook().start()
        hook.allow = {"nodekey:" + KEY_A.hex()}
        wc = WebhookClient(hook.url, 2.0, True, VerdictCache(30.0))
        try:
            assert (await wc.check(KEY_A, "198.51.100.7")).allow
            denied = await wc.check(KEY_B, "198.51.100.7")
            assert not denied.allow and denied.counter == "webhook_denied"
            assert hook.seen[0]["line"] == "POST /admit?from=derper HTTP/1.1"
            assert hook.seen[0]["headers"]["content-type"] == "application/json"
            assert hook.seen[0]["json"] == {"NodePublic": "nodekey:" + KEY_A.hex(), "Source": "198.51.100.7"}
            assert wc.cached(KEY_A, "198.51.100.7").allow and not wc.cached(KEY_B, "198.51.100.7").allow
            assert wc.cached(KEY_A, "198.51.100.8") is None              # per key and address
            # concurrent checks of one pair share one request
            n = len(hook.seen)
            hook.delay = 0.3
            verdicts = await asyncio.gather(*(wc.check(KEY_A, "203.0.113.1") for _ in range(5)))
            assert all(v.allow for v in verdicts) and len(hook.seen) == n + 1
        finally:
            hook.close()
    run(main())


@pytest.mark.parametrize("fail_open", [True, False])
def test_webhook_timeout_and_unreachable_follow_fail_open(fail_open) -> None:
    async def main():
        hook = await Webhook().start()
        hook.allow = {"nodekey:" + KEY_A.hex()}
        hook.delay = 5.0
        wc = WebhookClient(hook.url, 0.3, fail_open, VerdictCache(30.0))
        t0 = time.monotonic()
        slow = await wc.check(KEY_B, "198.51.100.7")
        assert time.monotonic() - t0 < 3.0                         # the timeout, not the server, decided
        assert slow.allow is fail_open and (fail_open or slow.counter == "webhook_unreachable")
        assert wc.cached(KEY_B, "198.51.100.7") is None             # a guess is never cached
        hook.close()
        await hook.server.wait_closed()
        down = await WebhookClient(hook.url, 0.3, fail_open, VerdictCache(30.0)).check(KEY_A, "198.51.100.7")
        assert down.allow is fail_open
        assert wc.counters["unreachable"] == 1 and wc.counters["failed_open"] == int(fail_open)
    run(main())


@pytest.mark.parametrize("status, body", [(500, b'{"Allow": true}'), (200, b"not json"), (200, b'{"Allow": "y"}')])
def test_webhook_errors_refuse_even_with_fail_open(status, body) -> None:
    async def main():
        hook = await Webhook().start()
        hook.answer = lambda req: (status, body)
        try:
            verdict = await WebhookClient(hook.url, 2.0, True, VerdictCache(30.0)).check(KEY_A, "198.51.100.7")
            assert not verdict.allow and verdict.counter == "webhook_error"
        finally:
            hook.close()
    run(main())


# ---- wgc derper -verify-client-url ----------------------------------------------------------------------------

def test_derper_asks_the_webhook_and_caches_its_answers(derper) -> None:
    (ka, pa), (kb, pb), (kc, pc) = new_key(), new_key(), new_key()

    async def main():
        hook = await Webhook().start()
        hook.allow = {"nodekey:" + pa.hex(), "nodekey:" + pc.hex()}
        srv = derper("-verify-client-url", hook.url, "--verify-client-url-cache=1m", tls=False)
        a, c = client(srv.url, ka), client(srv.url, kc)
        await a.start()
        await c.start()
        try:
            await exchange(a, c, pc, b"admitted by the webhook")
            with pytest.raises(ConnectError):
                await client(srv.url, kb, reconnect=False).connect_once()
            assert await metric(srv, 'derp_admission_refused_total{reason="webhook_denied"}') == 1
            asked = len(hook.seen)
            assert {r["json"]["NodePublic"] for r in hook.seen} == {"nodekey:" + k.hex() for k in (pa, pb, pc)}
            assert all(r["json"]["Source"] == "127.0.0.1" for r in hook.seen)
            assert await admitted(srv.port, ka)                     # from the cache: not asked again
            assert len(hook.seen) == asked
        finally:
            await a.close()
            await c.close()
            hook.close()
    run(main())


def test_frames_sent_while_the_webhook_thinks_are_relayed_once_admitted(derper) -> None:
    """A client may send packets right after ClientInfo (the Go client does); they wait for the answer."""
    (ka, pa), (kb, pb) = new_key(), new_key()

    async def main():
        hook = await Webhook().start()
        hook.allow = {"nodekey:" + pa.hex(), "nodekey:" + pb.hex()}
        srv = derper("-verify-client-url", hook.url, tls=False)
        b = client(srv.url, kb)
        await b.start()
        hook.delay = 0.5
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            core = P.ClientConnection(ka, os.urandom, 0.0)
            while core.state == P.ClientState.AWAIT_SERVER_KEY:
                for out in core.receive_data(await reader.read(65536), 0.0):
                    writer.write(out.data)                       # ClientInfo ...
            writer.write(core.send_packet(pb, b"sent before ServerInfo"))   # ... and at once a packet
            assert (await b.recv_packet(10)).data == b"sent before ServerInfo"
            assert [r["json"]["NodePublic"] for r in hook.seen].count("nodekey:" + pa.hex()) == 1
        finally:
            writer.close()
            await b.close()
            hook.close()
    run(main())


@pytest.mark.parametrize("fail_open", [True, False])
def test_derper_with_the_webhook_down(derper, fail_open) -> None:
    async def main():
        hook = await Webhook().start()
        url = hook.url
        hook.close()
        await hook.server.wait_closed()
        srv = derper("-verify-client-url", url, f"-verify-client-url-fail-open={str(fail_open).lower()}", tls=False)
        assert await admitted(srv.port, new_key()[0]) is fail_open
        if not fail_open:
            assert await metric(srv, 'derp_admission_refused_total{reason="webhook_unreachable"}') == 1
    run(main())


# ---- wgc derper -verify-clients ------------------------------------------------------------------------------

def interface(own: bytes, peers: list[bytes]) -> dict:
    snap = sample_status("wgv0")
    snap["public_key"] = b64(own)
    snap["peers"] = [peer(0, None, ["100.64.0.9/32"], "none") | {"public_key": b64(p), "short": b64(p)[:8]}
                     for p in peers]
    return snap


@pytest.fixture
def control_dir(tmp_path, monkeypatch):
    d = tmp_path / "ctl"
    monkeypatch.setenv("WGC_CONTROL_DIR", str(d))
    return d


def test_verify_clients_admits_the_interfaces_peers_and_follows_changes(derper, control_dir) -> None:
    (kown, pown), (k2, p2), (k3, p3), (k4, p4) = new_key(), new_key(), new_key(), new_key()

    async def main():
        target = ScriptedTarget(interface(pown, [p2, p3]))
        ctl = await start_control_server("wgv0", target)
        try:
            srv = await asyncio.to_thread(derper, "-verify-clients", "--verify-clients-interval=200ms", tls=False)
            assert "admitting the 3 keys" in srv.log()
            a, b = client(srv.url, k2), client(srv.url, k3)
            await a.start()
            await b.start()
            await exchange(a, b, p3, b"peers of the local interface")
            assert await admitted(srv.port, kown)                    # its own key too
            assert not await admitted(srv.port, k4)
            assert await metric(srv, 'derp_admission_refused_total{reason="verify_clients"}') == 1
            target.snapshot = interface(pown, [p2, p4])              # p3 removed, p4 added
            first = b.stream
            assert await asyncio.wait_for(first.done, 5)             # p3's connection is closed ...
            assert a.stream is not None and not a.stream.done.done()  # ... p2's is not
            assert not await admitted(srv.port, k3) and await admitted(srv.port, k4)
            await a.close()
            await b.close()
        finally:
            ctl.close()
    run(main())


def test_verify_clients_with_no_interface_refuses_to_start(control_dir) -> None:
    line = derper_fails("-verify-clients", open_relay=False)
    assert "no wgc interface is running" in line and "--allowed-keys-file" in line and "-verify-client-url" in line
    line = derper_fails("-verify-clients", "--verify-clients-interface", "wg7", open_relay=False)
    assert "'wg7' is not running" in line and "--allowed-keys-file" in line


def test_verify_clients_names_the_interface_when_several_run(derper, control_dir) -> None:
    (k1, p1), (k2, p2) = new_key(), new_key()

    async def main():
        ctls = [await start_control_server("wga", ScriptedTarget(interface(p1, []))),
                await start_control_server("wgb", ScriptedTarget(interface(p2, [])))]
        try:
            line = await asyncio.to_thread(derper_fails, "-verify-clients", open_relay=False)
            assert "several wgc interfaces are running (wga, wgb)" in line
            srv = await asyncio.to_thread(derper, "-verify-clients", "--verify-clients-interface", "wgb", tls=False)
            assert await admitted(srv.port, k2) and not await admitted(srv.port, k1)
        finally:
            for ctl in ctls:
                ctl.close()
    run(main())


# ---- wgc derper --bindings-file (TOFU) ---------------------------------------------------------------------------

def from_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def test_tofu_bindings_survive_a_restart(derper, tmp_path) -> None:
    path = tmp_path / "bindings.json"
    (ka, pa), (kb, pb) = new_key(), new_key()
    args = ("--open-relay", "--bindings-file", str(path), "--trust-proxy")

    async def main():
        srv = derper(*args, tls=False)
        assert await admitted(srv.port, ka, from_ip("198.51.100.1"))
        assert not await admitted(srv.port, kb, from_ip("198.51.100.1"))       # another key for that identity
        assert await admitted(srv.port, kb, from_ip("198.51.100.2"))
        assert await admitted(srv.port, ka, from_ip("198.51.100.1"))            # its own key, again
        assert await metric(srv, 'derp_admission_refused_total{reason="binding_conflict"}') == 1
        deadline = time.monotonic() + 5
        while len(json.loads(path.read_text())["bindings"]) < 2:
            assert time.monotonic() < deadline, path.read_text()
            await asyncio.sleep(0.1)
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(10)
        assert os.stat(path).st_mode & 0o777 == 0o600                   # written atomically, private ...
        assert not [n for n in os.listdir(tmp_path) if "tmp" in n]       # ... and no temporary left
        again = derper(*args, tls=False)
        assert "2 identities bound" in again.log()
        assert await admitted(again.port, ka, from_ip("198.51.100.1"))
        assert not await admitted(again.port, kb, from_ip("198.51.100.1"))
        assert not await admitted(again.port, ka, from_ip("198.51.100.2"))
        assert await admitted(again.port, kb, from_ip("198.51.100.2"))
        # the operator unbinds an identity: edit the file, SIGHUP
        data = json.loads(path.read_text())
        del data["bindings"]["ip:198.51.100.1"]
        path.write_text(json.dumps(data))
        again.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not await admitted(again.port, kb, from_ip("198.51.100.1")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    run(main())


def test_tofu_by_header_identity(derper, tmp_path) -> None:
    (ka, pa), (kb, pb) = new_key(), new_key()
    srv = derper("--open-relay", "--bindings-file", str(tmp_path / "b.json"), "--bindings-identity",
                 "header:X-Client-Id", tls=False)

    async def main():
        assert await admitted(srv.port, ka, {"X-Client-Id": "laptop"})
        assert not await admitted(srv.port, kb, {"X-Client-Id": "laptop"})
        assert await admitted(srv.port, kb, {"X-Client-Id": "phone"})
        assert await admitted(srv.port, kb)                         # no identity claimed: not bound
    run(main())


@pytest.mark.parametrize("args, words", [
    (["--bindings-identity", "cookie"], "--bindings-identity: identity must be 'ip' or 'header:NAME'"),
    (["--bindings-file", "/nonexistent-dir/b.json"], "cannot write bindings file"),
    (["--verify-client-url", "ftp://x/"], "must be an http:// or https:// URL"),
    (["--verify-clients-interface", "wg0"], "go with -verify-clients"),
])
def test_admission_mistakes_are_one_line(tmp_path, args, words) -> None:
    if args[0] == "--bindings-identity":
        args = ["--bindings-file", str(tmp_path / "b.json")] + args
    line = derper_fails(*args)
    assert words in line, line


def test_a_bad_bindings_file_stops_the_start(tmp_path) -> None:
    bad = tmp_path / "b.json"
    bad.write_text('{"version": 1, "bindings": {"ip:1.2.3.4": {"key": "short"}}}')
    line = derper_fails("--bindings-file", str(bad))
    assert str(bad) in line and "not a base64 key" in line
