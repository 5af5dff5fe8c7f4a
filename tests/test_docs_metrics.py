"""docs/metrics.md lists every metric the relay and the client export, and nothing they do not: the names
in its tables are compared with what the two collectors produce (issue 10 §4), the relay's with a
certificate loaded, so its CertStore's metrics are compared too."""
from __future__ import annotations

import asyncio
import os
import pathlib
import re

from prometheus_client import generate_latest

from derp.aio.certstore import CertStore, selfsigned_files
from derp.aio.quic_server import QuicListener
from derp.aio.metrics import make_registry as relay_registry
from derp.aio.server import DerpServer, ServerOptions
from derp.keys import private_key_from_random
from derp.server import AccessList, Relay, ServerConfig
from wgclient.aio.metrics import InterfaceCollector, make_registry

from tests.wgclient.test_client_metrics import runner

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


async def _quic_listener(server: DerpServer) -> QuicListener:
    return QuicListener(server, lambda: None)   # no socket: only its counters are collected


def exported(text: bytes) -> set[str]:
    return {line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE ")}


def documented() -> set[str]:
    names = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names.update(re.findall(r"`((?:derp|wgc)_[a-z0-9_]+)", first))
    return names


def test_every_exported_metric_is_documented_and_nothing_else(tmp_path) -> None:
    relay = Relay(private_key_from_random(os.urandom(32)), ServerConfig(), AccessList(None), lambda: 0.5)
    relay.drops["queue_full"] = relay.refused["acl"] = 1
    server = DerpServer(relay, ServerOptions())
    server.certs = CertStore("derp.example.net")
    server.certs.load_files(*selfsigned_files(str(tmp_path), "derp.example.net"))
    server.quic = asyncio.run(_quic_listener(server))
    names = exported(generate_latest(relay_registry(server)))
    assert "derp_tls_cert_expiry_timestamp_seconds" in names
    names |= exported(generate_latest(make_registry(InterfaceCollector(runner(), "wg0", {}, drops=lambda: {"x": 1}))))
    assert names - documented() == set(), "exported but not in docs/metrics.md"
    assert documented() - names == set(), "in docs/metrics.md but not exported"
