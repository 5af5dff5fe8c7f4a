"""A helper process that a test runs inside its network namespace (`ip netns exec`): it reads one JSON
command a line on stdin and answers one JSON line on stdout, so the test can speak HTTP(S), inspect the
certificate a TLS server hands out and hold DERP clients open there without a process per step.

Commands (`op`): `get` (url, ca?, headers?) -> status, body; `post` (url, body) -> status, body;
`leaf` (host, port, sni, ca?, alpn?) -> sha256/notAfter/verified/alpn of the served certificate;
`connect` (map or url, ca, name, keys?) -> two DERP clients of a region (or a /derp URL; private keys
given as hex, or fresh ones) that relay a packet each way, kept open; `admitted` (map or url, ca, key) ->
whether the relay admits that key; `relay` (name) -> the kept clients relay again and report how often each
(re)connected; `quit`.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import sys
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from derp.aio.client import ConnectError, DerpClient  # noqa: E402
from derp.aio.targets import targets_for_region, targets_for_url  # noqa: E402
from derp.derpmap import parse_derpmap  # noqa: E402
from derp.keys import private_key_from_random, public_key_of  # noqa: E402

CLIENTS: dict[str, tuple[DerpClient, DerpClient, bytes, bytes]] = {}


def _ctx(ca: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=ca) if ca else None


def http(cmd: dict) -> dict:
    data = cmd["body"].encode() if "body" in cmd else None
    req = urllib.request.Request(cmd["url"], data=data, headers=cmd.get("headers", {}),
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10, context=_ctx(cmd.get("ca"))) as resp:
            return {"status": resp.status, "body": resp.read().decode("utf-8", "replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode("utf-8", "replace")}


def leaf(cmd: dict) -> dict:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cmd.get("alpn"):
        ctx.set_alpn_protocols(cmd["alpn"])
    with socket.create_connection((cmd["host"], cmd["port"]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=cmd["sni"]) as tls:
            der = tls.getpeercert(binary_form=True)
            alpn = tls.selected_alpn_protocol()
    verified = False
    if cmd.get("ca"):   # a second handshake that verifies chain and name the way a DERP client does
        vctx = ssl.create_default_context(cafile=cmd["ca"])
        try:
            with socket.create_connection((cmd["host"], cmd["port"]), timeout=5) as raw:
                with vctx.wrap_socket(raw, server_hostname=cmd["sni"]):
                    verified = True
        except ssl.SSLError:
            verified = False
    from cryptography import x509
    cert = x509.load_der_x509_certificate(der)
    exts = [e.oid.dotted_string for e in cert.extensions]
    return {"sha256": hashlib.sha256(der).hexdigest(), "not_after": cert.not_valid_after_utc.timestamp(),
            "verified": verified, "alpn": alpn, "extensions": exts}


async def _exchange(a: DerpClient, b: DerpClient, b_pub: bytes, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        a.send_packet(b_pub, data)
        try:
            ev = await b.recv_packet(0.3)
            if ev.data == data:
                return
        except asyncio.TimeoutError:
            if loop.time() > deadline:
                raise AssertionError("packet not relayed within 10 s") from None


def _targets(cmd: dict) -> list:
    if cmd.get("url"):
        return targets_for_url(cmd["url"])
    with open(cmd["map"], encoding="utf-8") as fh:
        dm = parse_derpmap(fh.read())
    return targets_for_region(dm.regions[min(dm.regions)])


async def connect(cmd: dict) -> dict:
    keys = ([bytes.fromhex(k) for k in cmd["keys"]] if cmd.get("keys") else
            [private_key_from_random(os.urandom(32)) for _ in range(2)])
    pubs = [public_key_of(k) for k in keys]
    a, b = (DerpClient(k, _targets(cmd), ca_file=cmd.get("ca")) for k in keys)
    await a.start(timeout=10)
    await b.start(timeout=10)
    await _exchange(a, b, pubs[1], b"a->b " + os.urandom(8).hex().encode())
    await _exchange(b, a, pubs[0], b"b->a " + os.urandom(8).hex().encode())
    CLIENTS[cmd["name"]] = (a, b, pubs[0], pubs[1])
    return {"relayed": True, "connects": [a.stats.connects, b.stats.connects]}


async def admitted(cmd: dict) -> dict:
    c = DerpClient(bytes.fromhex(cmd["key"]), _targets(cmd), ca_file=cmd.get("ca"), reconnect=False)
    try:
        await c.connect_once()
        return {"admitted": True}
    except ConnectError as exc:
        return {"admitted": False, "why": str(exc)}
    finally:
        await c.close()


async def relay(cmd: dict) -> dict:
    a, b, pa, pb = CLIENTS[cmd["name"]]
    await _exchange(a, b, pb, b"again a->b " + os.urandom(8).hex().encode())
    await _exchange(b, a, pa, b"again b->a " + os.urandom(8).hex().encode())
    return {"relayed": True, "connects": [a.stats.connects, b.stats.connects]}


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "quit":
                break
            if op in ("get", "post"):
                out = await asyncio.to_thread(http, cmd)
            elif op == "leaf":
                out = await asyncio.to_thread(leaf, cmd)
            elif op == "connect":
                out = await asyncio.wait_for(connect(cmd), 30)
            elif op == "admitted":
                out = await asyncio.wait_for(admitted(cmd), 30)
            elif op == "relay":
                out = await asyncio.wait_for(relay(cmd), 30)
            else:
                out = {"error": f"unknown op {op!r}"}
        except Exception as exc:   # reported to the test, which fails with it
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)
    for a, b, _, _ in CLIENTS.values():
        await a.close()
        await b.close()


if __name__ == "__main__":
    asyncio.run(main())
