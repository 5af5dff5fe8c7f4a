"""`wgc derper --certmode letsencrypt` against Debian's pebble (Let's Encrypt's ACME test server) in a
network namespace (tools/acmelab.py, with tests/derp/pebble_lab.py): issuance through TLS-ALPN-01 on the DERP port and through
HTTP-01 on --http-port, the cache in --certdir across a restart, renewal swapped into the running
listener without dropping connections, and a failing challenge that leaves the old certificate serving.
DERP clients verify the served chain against pebble's root CA and relay packets."""
from __future__ import annotations

import os
import re
import signal

import pytest

from tests.derp.pebble_lab import HOST, PebbleLab
from tests.support.prereq import require_binary, require_root

pytestmark = [pytest.mark.netns]


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_binary("pebble", "pebble-challtestsrv", "ip")
    labs: list[PebbleLab] = []

    def make(validity: int = 3600) -> PebbleLab:
        labs.append(PebbleLab(tmp_path, validity))
        return labs[-1]

    try:
        yield make
    finally:
        for one in labs:
            one.close()


def _orders(lab: PebbleLab, result: str) -> float:
    return lab.metrics().get(f'derp_acme_orders_total{{result="{result}"}}', 0.0)


def _validations(lab: PebbleLab, challenge: str) -> float:
    return lab.metrics().get(f'derp_acme_validations_total{{challenge="{challenge}"}}', 0.0)


@pytest.mark.timeout(150)
def test_tls_alpn01_issues_a_chain_clients_verify_and_the_cache_survives_a_restart(lab, tmp_path) -> None:
    lab = lab()
    certdir = tmp_path / "certs"
    proc = lab.derper(certdir)          # the default challenge: tls-alpn-01 on the DERP port
    lab.wait_for("a certificate issued", lambda: _orders(lab, "ok") >= 1, 60)
    assert _validations(lab, "tls-alpn-01") >= 1 and _validations(lab, "http-01") == 0
    served = lab.leaf()
    assert served["verified"], "the served chain does not verify against pebble's root for the host name"
    out = lab.call("connect", map=lab.derpmap, ca=lab.root_ca, name="first")
    assert out.get("relayed"), out
    # the validation handshake itself: ALPN acme-tls/1 gets the acmeIdentifier certificate only while a
    # validation is pending; now there is none, so it gets the normal certificate
    assert lab.leaf(alpn=["acme-tls/1"])["sha256"] == served["sha256"]
    assert (certdir / "acme-account.key").stat().st_mode & 0o777 == 0o600
    assert (certdir / f"acme-{HOST}.key").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in lab.log(proc)
    lab.stop(proc)
    proc = lab.derper(certdir)          # restart: the cached certificate is served, no new order
    lab.wait_for("the restarted relay serving", lambda: lab.metrics().get("derp_tls_cert_expiry_timestamp_seconds"), 20)
    assert lab.leaf()["sha256"] == served["sha256"]
    assert _orders(lab, "ok") == 0 and "serving the cached certificate" in lab.log(proc)
    assert lab.call("connect", map=lab.derpmap, ca=lab.root_ca, name="after-restart").get("relayed")


@pytest.mark.timeout(150)
def test_http01_issues_through_the_http_port(lab, tmp_path) -> None:
    lab = lab()
    lab.derper(tmp_path / "certs", "--acme-challenge", "http-01")
    lab.wait_for("a certificate issued", lambda: _orders(lab, "ok") >= 1, 60)
    assert _validations(lab, "http-01") >= 1 and _validations(lab, "tls-alpn-01") == 0
    assert lab.leaf()["verified"]
    assert lab.call("connect", map=lab.derpmap, ca=lab.root_ca, name="http01").get("relayed")


@pytest.mark.timeout(180)
def test_renewal_is_swapped_in_without_dropping_connections(lab, tmp_path) -> None:
    lab = lab(validity=24)
    proc = lab.derper(tmp_path / "certs", "--acme-renew-before", "50%")
    lab.wait_for("a certificate issued", lambda: _orders(lab, "ok") >= 1, 60)
    first = lab.leaf()
    held = lab.call("connect", map=lab.derpmap, ca=lab.root_ca, name="held")
    assert held.get("relayed"), held
    lab.wait_for("a renewal", lambda: _orders(lab, "ok") >= 2, 60)
    second = lab.leaf()
    assert second["sha256"] != first["sha256"] and second["verified"]
    assert second["not_after"] > first["not_after"]
    again = lab.call("relay", name="held")          # the connections made before the swap still relay
    assert again.get("relayed") and again["connects"] == held["connects"], (held, again)
    assert lab.call("connect", map=lab.derpmap, ca=lab.root_ca, name="new").get("relayed")
    assert proc.poll() is None


@pytest.mark.timeout(180)
def test_a_failing_challenge_keeps_the_old_certificate_serving(lab, tmp_path) -> None:
    lab = lab(validity=90)
    proc = lab.derper(tmp_path / "certs", "--acme-renew-before", "85%", "--acme-retry", "2s")
    lab.wait_for("a certificate issued", lambda: _orders(lab, "ok") >= 1, 60)
    lab.set_dns("127.0.0.2")            # pebble now validates against an address where nothing listens
    lab.wait_for("a failed renewal", lambda: _orders(lab, "failed") >= 1, 60)
    # a renewal already validated before the DNS change may still have landed; from here on none can
    old, issued = lab.leaf(), _orders(lab, "ok")
    failed = _orders(lab, "failed")
    lab.wait_for("another failed renewal", lambda: _orders(lab, "failed") > failed, 60)
    still = lab.leaf()
    assert still["sha256"] == old["sha256"] and still["verified"] and _orders(lab, "ok") == issued
    assert lab.call("connect", map=lab.derpmap, ca=lab.root_ca, name="during-failure").get("relayed")
    log = lab.log(proc)
    assert re.search(rf"renewal for {re.escape(HOST)} failed, still serving the certificate valid until \S+; "
                     r"retrying in \d+ s: tls-alpn-01", log), log[-2000:]
    lab.set_dns(None)                   # the retry (backoff from 2 s) then succeeds
    lab.wait_for("a renewal after the failure", lambda: _orders(lab, "ok") > issued, 60)
    assert lab.leaf()["sha256"] != old["sha256"]
    os.kill(proc.pid, signal.SIGTERM)
