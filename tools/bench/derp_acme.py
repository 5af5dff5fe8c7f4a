"""The certificate comparison of the DERP benchmark (`python3 -m tools.bench derp --compare-acme`): TLS
relayed throughput and idle round trip of `wgc derper` serving a manual certificate from a test CA beside
one serving a certificate it obtained itself from Debian's pebble ACME test server
(`--certmode letsencrypt`, TLS-ALPN-01), printed side by side with the ratio ACME / manual.

Both relays run at once in the ACME lab's network namespace (tools/acmelab.py: pebble, its mock DNS) and
are measured alternately, --acme-rounds times each (the order swapped every round), by the same clients
on its loopback; each figure is the median of its rounds. The clients verify each served chain (pebble's
root for the ACME one) for the certificate's DNS name while dialing 127.0.0.1. The namespace, with every
process in it, is deleted afterwards, also on failure.
"""
from __future__ import annotations

import os
import shutil
import statistics

from tools.acmelab import BINARIES, HOST, AcmeLab
from tools.bench.derp import Derper, pct, pingpong, throughput

# the manual relay's tuning flags (tools/bench/derp.py Derper), so only the certificate differs
TUNING = ["--conn-rate", "0", "--max-conns-per-ip", "0", "--metrics-addr", "off", "--shutdown-timeout", "1"]


def missing_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "--compare-acme needs root (a network namespace for pebble)"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    return f"--compare-acme needs {', '.join(missing)} (Debian: apt-get install pebble iproute2)" if missing else None


def measure(port: int, ca: str, sni: str, seconds: float, pings: int) -> tuple[float, float, float, float]:
    mbps, pps = throughput("derp", port, True, ca, seconds, sni)
    rtts = pingpong(port, True, ca, pings, sni)
    return mbps, pps, pct(rtts, 50), pct(rtts, 99)


def compare(tmp: str, pki: dict[str, str], seconds: float, pings: int, rounds: int) -> None:
    workdir = os.path.join(tmp, "acme")
    os.mkdir(workdir)
    lab = AcmeLab(workdir)
    try:
        lab.derper(os.path.join(workdir, "certs"), *TUNING)
        lab.wait_for("a certificate from pebble served", lab.serving, 60)
        runs: dict[str, list] = {"manual": [], "acme": []}
        with lab.inside():
            srv = Derper(True, pki)
            try:
                targets = {"manual": (srv.port, pki["ca"], "127.0.0.1"), "acme": (443, lab.root_ca, HOST)}
                for r in range(rounds):
                    for kind in (("manual", "acme") if r % 2 == 0 else ("acme", "manual")):
                        runs[kind].append(measure(*targets[kind], seconds, pings))
            finally:
                srv.stop()
    finally:
        lab.close()
    manual, acme = ([statistics.median(col) for col in zip(*runs[k])] for k in ("manual", "acme"))
    print(f"certificate comparison: median of {rounds} alternated rounds each")
    print(f"{'certificate (TLS, same namespace)':<36} {'relayed throughput':>34} {'RTT p50':>10} {'RTT p99':>10}")
    for name, (mbps, pps, p50, p99) in (("manual (test CA, 127.0.0.1)", manual),
                                       (f"ACME (pebble, {HOST})", acme)):
        print(f"{name:<36} {mbps:7.0f} Mbit/s {pps:9.0f} packets/s {p50:7.0f} µs {p99:7.0f} µs")
    ratios = [a / m if m else float("nan") for a, m in zip(acme, manual)]
    print(f"{'ratio ACME / manual':<36} {ratios[0]:>13.2f}x {ratios[1]:>18.2f}x {ratios[2]:>9.2f}x {ratios[3]:>9.2f}x")
