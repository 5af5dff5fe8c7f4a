"""docs/deploy.md, run: every `sh` block is marked (`<!-- run -->`, `<!-- run (network) -->` or `<!-- not run:
REASON -->`); the run blocks are executed in order as one script in a sandbox (tests/deploy/sandbox.py) in
a checkout's copy, with the doc's placeholders substituted (the map's addresses become loopback ones, the
other peer's key a generated one) and the certificate from a test CA that the sandbox trusts. The network
blocks (installing wheels from PyPI) run first, with the host's network and the same overlays; the rest in
a network namespace of its own: firewall, relay under systemd's stand-in, client `wgc@wg0`, Prometheus."""
from __future__ import annotations

import base64
import os
import re

import pytest

from tests.support.prereq import missing as prereq_missing

from deploy_paths import ROOT, need_sandbox
from derp.aio.certs import make_ca, make_cert, write_pair
from sandbox import Sandbox, copy_checkout, have_tools

DOC = ROOT / "docs" / "deploy.md"
BLOCK = re.compile(r"(?:<!-- (run|run \(network\)|not run: [^>]+) -->\n)?```sh\n(.*?)```", re.S)
PLACES = {"203.0.113.10": "127.0.0.1", "198.51.100.20": "127.0.0.2"}
pytestmark = [pytest.mark.timeout(900), pytest.mark.netns]


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def test_every_block_is_marked() -> None:
    found = blocks()
    assert len(found) >= 10
    unmarked = [body.splitlines()[0] for mark, body in found if mark is None]
    assert not unmarked, f"sh blocks without a <!-- run --> / <!-- not run: ... --> marker: {unmarked}"
    assert DOC.read_text().count("```sh") == len(found)


def test_doc_commands_run(tmp_path) -> None:
    need_sandbox()
    missing = have_tools("nft", "openssl", "promtool", "prometheus", "update-ca-certificates")
    if missing:
        prereq_missing(f"missing tools: {', '.join(missing)} (tools/setup.sh installs them)")
    box = Sandbox(tmp_path / "box", hosts={"relay.example.net": "127.0.0.1", "relay2.example.net": "127.0.0.2"})
    checkout = box.share / "wgc"
    copy_checkout(ROOT, checkout)
    ca = make_ca("wgc deploy-doc test CA")
    (box.share / "ca.crt").write_bytes(ca.cert_pem)
    write_pair(make_cert(["relay.example.net"], ca), str(checkout / "fullchain.pem"), str(checkout / "privkey.pem"))
    other_key = base64.b64encode(os.urandom(32)).decode()

    def script(wanted) -> str:
        parts = ["cd /mnt/wgc"]
        for i, (mark, body) in enumerate(blocks()):
            if wanted(mark):
                for old, new in PLACES.items():
                    body = body.replace(old, new)
                body = body.replace("<other-peer-public-key>", other_key)
                parts.append(f"echo '=== block {i}'\n{body}")
        return "\n".join(parts) + "\n"

    box.check(script(lambda m: m == "run (network)"), timeout=600, network=True)
    trust = ("cp /mnt/ca.crt /usr/local/share/ca-certificates/wgc-deploy-test.crt\n"
             "update-ca-certificates >/dev/null 2>&1\n")
    out = box.check(trust + script(lambda m: m == "run"), timeout=300)
    assert re.search(r"^127\.0\.0\.1\s+relay\.example\.net", out, re.M)        # getent
    assert re.search(r"^ok$", out, re.M)                       # /healthz
    assert '"status": "ok"' in out and "map ok" in out
    assert re.search(r"^2$", out, re.M)                        # two regions served at /derpmap/default
    # the client, through the relay: over QUIC, since the map node has WgcQUICPort and UDP 443 is open
    assert re.search(r'home region: "fra" \(900\), connected over QUIC', out)
    assert "Active: active (running)" in out
    assert re.search(r"^derp_tls_cert_expiry_timestamp_seconds \S+$", out, re.M)
    assert "SUCCESS" in out and '"wgc-derper"' in out
