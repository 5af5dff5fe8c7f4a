"""The DERP map example in the docs is the one a relay serves: docs/derpmap.example.json parses as a
Tailscale DERP map, `wgc derper --derpmap-file` serves it byte for byte at /derpmap/default, and the
README's client examples fetch that path (no relay serves a `derpmap.json`)."""
from __future__ import annotations

import asyncio
import pathlib
import re

import pytest

from derp.derpmap import parse_derpmap

from derp_support import http_get

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "derpmap.example.json"
pytestmark = pytest.mark.timeout(60)


def test_example_map_parses() -> None:
    dm = parse_derpmap(EXAMPLE.read_text())
    node = dm.regions[900].nodes[0]
    assert (node.name, node.host_name, node.derp_port, node.stun_port) == ("900a", "relay.example.net", 443, 3478)


def test_derper_serves_the_example_byte_for_byte(derper) -> None:
    srv = derper("--open-relay", "--conn-rate", "0", "--derpmap-file", str(EXAMPLE), tls=False)
    status, headers, body = asyncio.run(asyncio.wait_for(http_get(srv.port, "/derpmap/default"), 20))
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert body == EXAMPLE.read_bytes()


def test_readme_and_docs_fetch_the_served_path() -> None:
    texts = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    for name, text in texts.items():
        urls = re.findall(r"--derpmap(?:=|\s+)(https?://[^\s`)]+)", text)
        for url in urls:
            assert url.endswith("/derpmap/default"), f"{name}: {url} is not a path wgc derper serves"
    assert "derpmap.example.json" in texts["derp.md"]
