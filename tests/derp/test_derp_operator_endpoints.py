"""The endpoints operators of derper and nefia-derp rely on: `/healthz` details with the token (uptime,
clients, memory, admission), `/bootstrap-dns` (published names, unpublished ones only when asked), `-home`,
`-derp=false`, and `-version`."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from derp_support import client, http_get, new_key

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_healthz_details_have_uptime_clients_and_memory(derper, monkeypatch) -> None:
    monkeypatch.setenv("NEFIA_DERP_METRICS_TOKEN", "nefia-s3cret")      # nefia-derp's variable
    srv = derper("--open-relay", "--client-rate-limit=1MB", tls=False)

    async def main():
        a, b = client(srv.url, new_key()[0]), client(srv.url, new_key()[0])
        await a.start()
        await b.start()
        try:
            assert (await http_get(srv.port, "/healthz"))[2] == b"ok\n"
            status, headers, body = await http_get(srv.port, "/healthz", {"Authorization": "Bearer nefia-s3cret"})
            d = json.loads(body)
            assert status == 200 and headers["content-type"] == "application/json"
            assert d["status"] == "ok" and d["clients"] == 2 and d["uptime_seconds"] >= 0
            assert 10 << 20 < d["memory"]["rss_bytes"] <= d["memory"]["peak_rss_bytes"] < 4 << 30
            assert d["admission"]["client_rate"] == {"bytes_per_second": 1_000_000, "burst_bytes": 65_568}
            assert (await http_get(srv.port, "/healthz", {"Authorization": "Bearer wrong"}))[0] == 401
        finally:
            await a.close()
            await b.close()
    run(main())


def test_bootstrap_dns_serves_published_names_and_unpublished_ones_when_asked(derper) -> None:
    # names that resolve without a network here: an address literal and /etc/hosts' localhost
    srv = derper("--open-relay", "-bootstrap-dns-names=127.0.0.1", "-unpublished-bootstrap-dns-names=localhost",
                 tls=False)

    async def main():
        for _ in range(100):                          # resolved in the background at start
            status, headers, body = await http_get(srv.port, "/bootstrap-dns")
            if json.loads(body):
                break
            await asyncio.sleep(0.05)
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"127.0.0.1": ["127.0.0.1"]}          # the unpublished name is not listed
        asked = json.loads((await http_get(srv.port, "/bootstrap-dns?q=localhost"))[2])
        assert list(asked) == ["localhost"] and "127.0.0.1" in asked["localhost"]   # ... but answered
        assert json.loads((await http_get(srv.port, "/bootstrap-dns?q=unknown.example"))[2]) == {"127.0.0.1": ["127.0.0.1"]}
    run(main())


def test_the_txt_rollout_form_is_refused() -> None:
    from admit_support import derper_fails
    line = derper_fails("-unpublished-bootstrap-dns-names=log.example.com/rollout.example.com")
    assert "-unpublished-bootstrap-dns-names" in line and "not supported" in line


def test_bootstrap_dns_without_names_is_an_empty_object(derper) -> None:
    srv = derper("--open-relay", tls=False)
    assert run(http_get(srv.port, "/bootstrap-dns"))[2] == b"{}"


@pytest.mark.parametrize("home, status, check", [
    ("", 200, lambda h, b: b"DERP" in b),
    ("blank", 200, lambda h, b: b == b""),
    ("https://example.net/about", 302, lambda h, b: h["location"] == "https://example.net/about"),
])
def test_home(derper, home, status, check) -> None:
    srv = derper("--open-relay", f"-home={home}", tls=False)
    got, headers, body = run(http_get(srv.port, "/"))
    assert got == status and check(headers, body)


def test_derp_false_keeps_the_other_endpoints(derper) -> None:
    srv = derper("--open-relay", "-derp=false", tls=False)

    async def main():
        status, _, body = await http_get(srv.port, "/derp", {"Upgrade": "DERP", "Connection": "Upgrade"})
        assert (status, body) == (404, b"derp server disabled\n")
        assert (await http_get(srv.port, "/bootstrap-dns"))[0] == 200
    run(main())


def test_unknown_home_is_one_line() -> None:
    from admit_support import derper_fails
    line = derper_fails("-home=somewhere")
    assert "unknown --home value 'somewhere'" in line


@pytest.mark.parametrize("flag", ["-version", "--version"])
def test_version(flag) -> None:
    proc = subprocess.run([sys.executable, "-m", "wgclient.cli", "derper", flag], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("wgc derper ") and proc.stderr == ""
