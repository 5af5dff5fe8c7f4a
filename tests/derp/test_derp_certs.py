"""The derper's certificates without an ACME server: manual files re-read on change and on SIGHUP without
dropping connections (a bad pair keeps the old one), the self-signed pair kept in --certdir so the
CertName pin survives a restart, the TLS-ALPN-01 answer on the lean listener (also with a ClientHello
split over segments), the HTTP-01 answer on the HTTP port, and one-line errors for bad ACME flags."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from cryptography import x509

from derp.aio.acme import ID_PE_ACME_IDENTIFIER, validation_context
from derp.aio.certs import make_ca, make_cert, write_pair
from derp.aio.certstore import CertStore, selfsigned_files
from derp.aio.server import DerpServer, ServerOptions
from derp.keys import private_key_from_random
from derp.server import AccessList, Relay, ServerConfig
from tests.derp.derp_support import client, exchange, http_get, new_key


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def served_leaf(port: int, sni: str | None = None, alpn: list[str] | None = None) -> tuple[str, x509.Certificate, str | None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
            return hashlib.sha256(der).hexdigest(), x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def sha_of(pem: bytes) -> str:
    from cryptography.hazmat.primitives import serialization
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).hexdigest()


def replace_pair(certdir, pair) -> None:
    """Write the pair next to the live files and rename them over (as certbot/cert-manager deploys do)."""
    write_pair(pair, str(certdir / "new.crt"), str(certdir / "new.key"))
    os.replace(certdir / "new.key", certdir / "127.0.0.1.key")
    os.replace(certdir / "new.crt", certdir / "127.0.0.1.crt")


def metric(srv, name: str) -> float:
    async def get():
        _, _, body = await http_get(int(srv.metrics.rsplit(":", 1)[1]), "/metrics")
        return body.decode()
    for line in asyncio.run(get()).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(what: str, predicate, timeout: float, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout} s; {log()[-2000:]}"
        time.sleep(0.2)


@pytest.fixture
def manual_certs(tmp_path):
    ca = make_ca()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    certdir = tmp_path / "certs"
    certdir.mkdir()
    first = make_cert(["127.0.0.1"], ca)
    write_pair(first, str(certdir / "127.0.0.1.crt"), str(certdir / "127.0.0.1.key"))
    return ca, certdir, first, str(tmp_path / "ca.pem")


def test_manual_certificate_is_reread_when_the_files_change_without_dropping_connections(derper, manual_certs):
    ca, certdir, first, ca_file = manual_certs
    srv = derper("--open-relay", "--certmode", "manual", "--hostname", "127.0.0.1", "--certdir", str(certdir),
                 "--cert-watch-interval", "0.3s", tls=False)
    url = f"https://127.0.0.1:{srv.port}/derp"
    assert served_leaf(srv.port)[0] == sha_of(first.cert_pem)

    async def main():
        (pa, ua), (pb, ub) = new_key(), new_key()
        a, b = client(url, pa, ca_file), client(url, pb, ca_file)
        await a.start(timeout=10)
        await b.start(timeout=10)
        try:
            await exchange(a, b, ub, b"before the swap")
            second = make_cert(["127.0.0.1"], ca)
            replace_pair(certdir, second)
            await asyncio.to_thread(wait_for, "the new certificate served",
                                    lambda: served_leaf(srv.port)[0] == sha_of(second.cert_pem), 15, srv.log)
            await exchange(a, b, ub, b"after the swap")
            await exchange(b, a, ua, b"and back")
            assert a.stats.connects == 1 and b.stats.connects == 1, "a connection was dropped by the swap"
            fresh = client(url, new_key()[0], ca_file)   # and a new client verifies the new chain
            await fresh.start(timeout=10)
            await fresh.close()
            # a mismatched pair (another certificate with the old key) is refused: the last good one stays
            third = make_cert(["127.0.0.1"], ca)
            (certdir / "new.crt").write_bytes(third.cert_pem)
            os.replace(certdir / "new.crt", certdir / "127.0.0.1.crt")
            await asyncio.to_thread(wait_for, "the failed reload counted",
                                    lambda: metric(srv, 'derp_tls_cert_reloads_total{result="failed"}') >= 1, 15,
                                    srv.log)
            assert served_leaf(srv.port)[0] == sha_of(second.cert_pem)
            await exchange(a, b, ub, b"still relaying")
        finally:
            await a.close()
            await b.close()

    run(main())
    assert metric(srv, 'derp_tls_cert_reloads_total{result="ok"}') >= 1
    assert re.search(r"cannot reload \S+127\.0\.0\.1\.crt .*still serving the certificate valid until", srv.log())


@pytest.mark.parametrize("engine", ["lean", "asyncio"])
def test_sighup_rereads_manual_certificates(derper, manual_certs, engine) -> None:
    ca, certdir, first, _ = manual_certs
    srv = derper("--open-relay", "--certmode", "manual", "--hostname", "127.0.0.1", "--certdir", str(certdir),
                 "--cert-watch-interval", "0", "--tls-engine", engine, tls=False)   # only SIGHUP can reload
    second = make_cert(["127.0.0.1"], ca)
    replace_pair(certdir, second)
    time.sleep(0.5)
    assert served_leaf(srv.port)[0] == sha_of(first.cert_pem)
    srv.proc.send_signal(signal.SIGHUP)
    wait_for("the certificate reloaded on SIGHUP", lambda: served_leaf(srv.port)[0] == sha_of(second.cert_pem),
             10, srv.log)
    assert "(SIGHUP)" in srv.log()


def test_selfsigned_pair_is_kept_so_the_pin_survives_a_restart(derper, tmp_path) -> None:
    certdir = tmp_path / "selfsigned"
    pins, served = [], []
    for _ in range(2):
        srv = derper("--open-relay", "--certmode", "selfsigned", "--hostname", "127.0.0.1", "--certdir",
                     str(certdir), tls=False)
        m = re.search(r'"CertName": "sha256-raw:([0-9a-f]{64})"', srv.log())
        assert m, srv.log()
        pins.append(m.group(1))
        served.append(served_leaf(srv.port)[0])
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(40)
    assert pins[0] == pins[1] == served[0] == served[1]
    assert (certdir / "127.0.0.1.key").stat().st_mode & 0o777 == 0o600


def test_selfsigned_files_are_created_once(tmp_path) -> None:
    crt, key = selfsigned_files(str(tmp_path / "d"), "203.0.113.7")
    before = open(crt, "rb").read()
    assert selfsigned_files(str(tmp_path / "d"), "203.0.113.7") == (crt, key)
    assert open(crt, "rb").read() == before and crt.endswith("203.0.113.7.crt")


# ---- ACME challenge answers in-process --------------------------------------------------------------------
async def _relay_with_store(store: CertStore) -> DerpServer:
    relay = Relay(private_key_from_random(os.urandom(32)), ServerConfig(), AccessList(None), lambda: 0.5)
    server = DerpServer(relay, ServerOptions(conn_rate=0), store.current)
    server.certs = store
    return server


def _store(tmp_path) -> tuple[CertStore, str]:
    crt, key = selfsigned_files(str(tmp_path), "derp.example.net")
    store = CertStore("derp.example.net")
    store.load_files(crt, key)
    return store, crt


def test_tls_alpn01_answer_only_for_acme_tls_handshakes_of_a_pending_name(tmp_path) -> None:
    store, crt = _store(tmp_path)
    normal = sha_of(open(crt, "rb").read())

    async def main():
        server = await _relay_with_store(store)
        port = await server.listen("127.0.0.1", 0)
        leaf = lambda *a: asyncio.to_thread(served_leaf, port, *a)  # noqa: E731
        assert (await leaf("derp.example.net", ["acme-tls/1"]))[0] == normal    # nothing pending
        store.alpn_contexts["derp.example.net"] = validation_context("derp.example.net", "tok.thumb")
        sha, cert, alpn = await leaf("derp.example.net", ["acme-tls/1"])
        assert sha != normal and alpn == "acme-tls/1"
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(ID_PE_ACME_IDENTIFIER))
        assert ext.critical and ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
        assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == ["derp.example.net"]
        assert (await leaf("derp.example.net", ["http/1.1"]))[0] == normal        # ordinary clients meanwhile
        assert (await leaf("other.example.net", ["acme-tls/1"]))[0] == normal     # a name not pending
        assert (await leaf(None, None))[0] == normal
        split = await asyncio.to_thread(_split_hello_leaf, port)                  # hello in two segments
        assert split == sha
        assert store.counters["alpn_validations"] == 2
        await server.shutdown(1)

    run(main())


def _split_hello_leaf(port: int) -> str:
    """A TLS-ALPN-01 handshake whose ClientHello arrives in two TCP segments 100 ms apart."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="derp.example.net")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = outgoing.read()
                if out.startswith(b"\x16") and len(out) > 20 and obj.version() is None and not incoming.pending:
                    sock.sendall(out[:20])
                    time.sleep(0.1)
                    sock.sendall(out[20:])
                elif out:
                    sock.sendall(out)
                data = sock.recv(65536)
                assert data, "server closed the handshake"
                incoming.write(data)
        der = obj.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest()


def test_http01_answer_on_the_http_port(tmp_path) -> None:
    store, _ = _store(tmp_path)

    async def main():
        server = await _relay_with_store(store)
        port = await server.listen_port80("127.0.0.1", 0)
        store.http_tokens["tok_123"] = b"tok_123.thumb"
        status, _, body = await http_get(port, "/.well-known/acme-challenge/tok_123")
        assert (status, body) == (200, b"tok_123.thumb")
        status, headers, _ = await http_get(port, "/.well-known/acme-challenge/unknown")
        assert status == 302 and headers["location"].startswith("https://")
        assert store.counters["http01_validations"] == 1
        await server.shutdown(1)

    run(main())


def test_selfsigned_certdir_problems_are_one_line(tmp_path) -> None:
    """A kept pair that no longer loads names the file; a --certdir that cannot be made says why."""
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "127.0.0.1.crt").write_bytes(b"not a certificate\n")
    (garbage / "127.0.0.1.key").write_bytes(make_cert(["127.0.0.1"]).key_pem)
    (tmp_path / "plainfile").write_text("x")
    for certdir, words in ((garbage, f"certificate {garbage}/127.0.0.1.crt is not PEM"),
                           (tmp_path / "plainfile" / "sub", "--certdir")):
        out = subprocess.run([sys.executable, "-m", "derp", "--no-stun", "--open-relay", "--metrics-addr", "off",
                              "-a", "127.0.0.1:0", "--http-port", "-1", "--certmode", "selfsigned", "--hostname",
                              "127.0.0.1", "--certdir", str(certdir)], capture_output=True, text=True, timeout=20)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wgc: ") and words in lines[0], out.stderr
    assert "not a directory" in lines[0]


def test_letsencrypt_relay_is_up_before_its_first_certificate(derper, tmp_path) -> None:
    """All listeners bound and `derper ready` printed with no certificate yet; the order (to a directory
    on a closed loopback port) starts after that, fails, is logged and counted; the relay keeps running."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    srv = derper("--open-relay", "--certmode", "letsencrypt", "--hostname", "derp.example.net", "--certdir",
                 str(tmp_path / "acme"), "--acme-directory", f"https://127.0.0.1:{closed}/dir", "--acme-retry",
                 "1h", tls=False)
    assert srv.tls and " http=" in srv.ready
    wait_for("the failed order counted", lambda: metric(srv, 'derp_acme_orders_total{result="failed"}') >= 1, 20,
             srv.log)
    assert "cannot get a certificate for derp.example.net (TLS handshakes fail until one is issued)" in srv.log()
    with pytest.raises((ssl.SSLError, OSError)):
        served_leaf(srv.port, sni="derp.example.net")
    assert srv.proc.poll() is None


@pytest.mark.parametrize("args, words", [
    (["--hostname", "192.0.2.1"], "public DNS name"),
    (["--hostname", "derp.example.net", "--acme-challenge", "http-01", "--http-port", "-1"], "--http-port"),
    (["--hostname", "derp.example.net", "--tls-engine", "asyncio"], "--tls-engine lean"),
    (["--hostname", "derp.example.net", "--acme-renew-before", "150%"], "--acme-renew-before"),
    (["--hostname", "derp.example.net", "--acme-retry", "soon"], "bad duration"),
    (["--hostname", "derp.example.net", "--acme-directory", "http://ca.example/dir"], "https://"),
    (["--hostname", "derp.example.net", "--acme-ca-file", "/nonexistent.pem"], "--acme-ca-file"),
    (["--hostname", "derp.example.net", "--certdir", "/proc/nope"], "must be a writable directory"),
])
def test_acme_usage_errors(args, words, tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "derp", "--no-stun", "--open-relay", "--metrics-addr", "off",
                          "-a", "127.0.0.1:0", "--http-port", "0", "--certmode", "letsencrypt", "--certdir",
                          str(tmp_path), *args], capture_output=True, text=True, timeout=20)
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_watch_interval_is_one_line(derper, manual_certs) -> None:
    _, certdir, _, _ = manual_certs
    out = subprocess.run([sys.executable, "-m", "derp", "--no-stun", "--open-relay", "--metrics-addr", "off",
                          "-a", "127.0.0.1:0", "--certmode", "manual", "--hostname", "127.0.0.1", "--certdir",
                          str(certdir), "--cert-watch-interval", "often"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 2 and "bad duration 'often'" in out.stderr and "Traceback" not in out.stderr
    json.dumps(out.stderr)


def test_documented_derper_command_lines_parse() -> None:
    """Every `wgc derper` line in the README and docs/derp.md (continuations joined) uses real flags."""
    import pathlib
    import shlex
    from derp.aio.derper import build_parser
    from derp.aio.derper_args import parse_command_line   # Go's flag syntax too (derper's own lines)
    root = pathlib.Path(__file__).resolve().parents[2]
    seen = 0
    for path in (root / "README.md", root / "docs" / "derp.md"):
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("wgc derper ") or "..." in line:
                continue
            args = parse_command_line(build_parser(), shlex.split(line)[2:], {})
            seen += 1
            if args.certmode == "letsencrypt":
                assert args.acme_email and args.hostname != "localhost"
    assert seen >= 4
