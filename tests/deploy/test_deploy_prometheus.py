"""deploy/prometheus: promtool accepts the scrape config and the alert rules, the rules' own unit tests pass
(each alert fires on what should trigger it and not on the rest), every metric the rules use is one a
running `wgc derper` exports, and the certificate-expiry gauge is the served certificate's notAfter,
following the files when they are replaced."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from deploy_paths import DEPLOY
from tests.support.prereq import missing
from derp.aio.certs import cert_not_after, make_ca, make_cert, write_pair
from derp.aio.client import DerpClient, targets_for_url
from derp.keys import private_key_from_random

PROM = DEPLOY / "prometheus"
pytestmark = pytest.mark.timeout(120)


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        missing("promtool is not installed (Debian's prometheus package)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_scrape_config_and_rules_check(tmp_path) -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    shutil.copy(PROM / "prometheus.yml", tmp_path)
    shutil.copy(PROM / "alerts.yml", tmp_path / config["rule_files"][0])   # the name it is installed under
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout
    done = promtool("check", "rules", str(PROM / "alerts.yml"))
    assert done.returncode == 0 and "5 rules found" in done.stdout, done.stdout + done.stderr
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9090"]


def test_alert_rules_unit_tests() -> None:
    done = promtool("test", "rules", str(PROM / "alerts.test.yml"))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_alerts_cover_what_operators_watch() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"DerpRelayDown", "DerpClientsNearMax", "DerpDropsRising", "DerpCertificateExpiresSoon"} <= names
    near_max = next(r["expr"] for r in rules if r["alert"] == "DerpClientsNearMax")
    # the limit comes from each relay's own derp_max_clients, never a number copied from the kit's flags
    assert "derp_max_clients" in near_max and "derp_max_clients{job=\"wgc-derper\"} > 0" in near_max
    assert not re.search(r"\b\d{2,}\b", near_max), near_max


class Relay:
    def __init__(self, certdir: str) -> None:
        cmd = [sys.executable, "-m", "wgclient.cli", "derper", "-a", "127.0.0.1:0", "--hostname", "relay.example.net",
               "--certmode", "manual", "--certdir", certdir, "--open-relay", "--no-stun", "--http-port", "-1",
               "--metrics-addr", "127.0.0.1:0", "--no-uvloop"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        self.metrics = re.search(r"metrics=(\S+)", line).group(1)
        self.port = int(re.search(r"addr=127\.0\.0\.1:(\d+)", line).group(1))

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        self.proc.kill()     # nothing to drain: the test is over
        self.proc.wait()


@pytest.fixture
def relay(tmp_path):
    ca = make_ca()
    write_pair(make_cert(["relay.example.net", "127.0.0.1"], ca), str(tmp_path / "relay.example.net.crt"),
               str(tmp_path / "relay.example.net.key"))
    r = Relay(str(tmp_path))
    r.ca = ca
    r.crt = tmp_path / "relay.example.net.crt"
    yield r
    r.stop()


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1) + ("_total" if m.group(2) == "counter" else ""))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, 1)[0])
    return names


async def drop_one(relay, ca_file: str) -> None:
    """A packet for a key nobody holds: the relay drops and counts it."""
    priv = private_key_from_random(os.urandom(32))
    client = DerpClient(priv, targets_for_url(f"https://127.0.0.1:{relay.port}/derp"), ca_file=ca_file)
    await client.start(timeout=10)
    try:
        for _ in range(100):
            client.send_packet(os.urandom(32), b"nobody")
            await asyncio.sleep(0.05)
            if "derp_packets_dropped_total" in relay.scrape():
                return
    finally:
        await client.close()


def test_rules_use_exported_metrics(relay, tmp_path) -> None:
    (tmp_path / "ca.crt").write_bytes(relay.ca.cert_pem)
    asyncio.run(asyncio.wait_for(drop_one(relay, str(tmp_path / "ca.crt")), 30))
    exported = exported_names(relay.scrape()) | {"up"}
    text = (PROM / "alerts.yml").read_text()
    used = set(re.findall(r"\b(derp_[a-z_]+|up)\{", text))
    assert used and used <= exported, used - exported


def gauge(text: str) -> float | None:
    m = re.search(r"^derp_tls_cert_expiry_timestamp_seconds (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_cert_expiry_gauge_follows_the_file(relay) -> None:
    assert gauge(relay.scrape()) == pytest.approx(cert_not_after(str(relay.crt)))
    assert gauge(relay.scrape()) > time.time() + 80 * 86400
    key = relay.crt.with_suffix(".key")
    write_pair(make_cert(["relay.example.net", "127.0.0.1"], relay.ca, days=300), str(relay.crt) + ".new",
               str(key) + ".new")
    os.replace(str(key) + ".new", key)
    os.replace(str(relay.crt) + ".new", relay.crt)   # the relay re-reads a changed pair (--cert-watch-interval)
    renewed = cert_not_after(str(relay.crt))
    deadline = time.monotonic() + 30
    while gauge(relay.scrape()) != pytest.approx(renewed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gauge(relay.scrape()) == pytest.approx(renewed) and renewed > time.time() + 290 * 86400
    relay.crt.unlink()   # a vanished file does not stop the served certificate: the gauge stays
    time.sleep(1)
    assert gauge(relay.scrape()) == pytest.approx(renewed)
