"""An ACME lab in one network namespace: Debian's `pebble` (Let's Encrypt's test CA) with its own HTTPS
certificate from a test CA, `pebble-challtestsrv` as its mock DNS (every name answers 127.0.0.1 unless a
test overrides it), `wgc derper --certmode letsencrypt` processes on 127.0.0.1:443/:80 inside, and a
`netns_agent` that speaks HTTP(S)/TLS/DERP there for the test. Everything is bounded in time and the
namespace (with every process in it) is deleted on close.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from derp.aio.certs import make_ca, make_cert, write_pair
from tools.natlab.netns import Namespace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "derp.wgc.test"
DIRECTORY = "https://127.0.0.1:14000/dir"
DNS_MGMT = "http://127.0.0.1:8055"
ENV = dict(os.environ, PYTHONPATH=ROOT)


def _readline(stream, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ""


class PebbleLab:
    def __init__(self, tmp_path, validity: int = 3600) -> None:
        self.tmp = tmp_path
        self.ns = Namespace.create("acme")
        self.derpers: list[subprocess.Popen] = []
        try:
            self._start(validity)
        except BaseException:
            self.close()
            raise

    # ---- setup ----------------------------------------------------------------------------------------
    def _start(self, validity: int) -> None:
        d = self.tmp
        ca = make_ca("pebble WFE test CA")
        self.wfe_ca = str(d / "wfe-ca.pem")
        (d / "wfe-ca.pem").write_bytes(ca.cert_pem)
        write_pair(make_cert(["127.0.0.1", "localhost"], ca), str(d / "wfe.crt"), str(d / "wfe.key"))
        config = {"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
                             "certificate": str(d / "wfe.crt"), "privateKey": str(d / "wfe.key"),
                             "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "",
                             "externalAccountBindingRequired": False, "certificateValidityPeriod": validity}}
        (d / "pebble.json").write_text(json.dumps(config))
        self.dns_log = open(d / "challtestsrv.log", "wb")
        self.ns.popen("pebble-challtestsrv", "-dns01", "127.0.0.1:8053", "-http01", "", "-https01", "",
                      "-tlsalpn01", "", "-management", "127.0.0.1:8055", "-defaultIPv4", "127.0.0.1",
                      "-defaultIPv6", "", stdout=self.dns_log, stderr=subprocess.STDOUT)
        self.pebble_log_path = d / "pebble.log"
        self.pebble_log = open(self.pebble_log_path, "wb")
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.ns.popen("pebble", "-config", str(d / "pebble.json"), "-dnsserver", "127.0.0.1:8053", env=env,
                      stdout=self.pebble_log, stderr=subprocess.STDOUT)
        self.agent = self.ns.popen(sys.executable, os.path.join(ROOT, "tests", "derp", "netns_agent.py"),
                                   env=ENV, cwd=ROOT, stdin=subprocess.PIPE, text=True)
        assert '"ready"' in _readline(self.agent.stdout, 20), "the netns agent did not start"
        deadline = time.monotonic() + 20
        while True:   # pebble is up once its directory answers over verified HTTPS
            out = self.call("get", url=DIRECTORY, ca=self.wfe_ca)
            if out.get("status") == 200:
                break
            assert time.monotonic() < deadline, f"pebble did not come up: {out} {self.pebble_text()}"
            time.sleep(0.2)
        root = self.call("get", url="https://127.0.0.1:15000/roots/0", ca=self.wfe_ca)
        assert root["status"] == 200, root
        self.root_ca = str(d / "pebble-root.pem")
        (d / "pebble-root.pem").write_text(root["body"])
        self.derpmap = str(d / "derpmap.json")
        node = {"Name": "900a", "RegionID": 900, "HostName": HOST, "IPv4": "127.0.0.1", "IPv6": "none"}
        (d / "derpmap.json").write_text(json.dumps({"Regions": {"900": {"RegionID": 900, "RegionCode": "acme",
                                                                         "Nodes": [node]}}}))

    # ---- the agent ----------------------------------------------------------------------------------
    def call(self, op: str, timeout: float = 40, **kw) -> dict:
        self.agent.stdin.write(json.dumps(dict(kw, op=op)) + "\n")
        self.agent.stdin.flush()
        line = _readline(self.agent.stdout, timeout)
        assert line, f"the netns agent did not answer {op} within {timeout} s"
        return json.loads(line)

    def leaf(self, alpn: list[str] | None = None) -> dict:
        out = self.call("leaf", host="127.0.0.1", port=443, sni=HOST, ca=self.root_ca, alpn=alpn)
        assert "error" not in out, out
        return out

    def metrics(self) -> dict[str, float]:
        out = self.call("get", url="http://127.0.0.1:9090/metrics")
        values = {}
        for line in out.get("body", "").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def set_dns(self, address: str | None) -> None:
        """Point HOST at `address` in pebble's DNS (None: back to the default 127.0.0.1)."""
        if address is None:
            out = self.call("post", url=f"{DNS_MGMT}/clear-a", body=json.dumps({"host": HOST + "."}))
        else:
            out = self.call("post", url=f"{DNS_MGMT}/add-a",
                            body=json.dumps({"host": HOST + ".", "addresses": [address]}))
        assert out.get("status") == 200, out

    # ---- derper -------------------------------------------------------------------------------------
    def derper(self, certdir, *args: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "derp", "-a", "127.0.0.1:443", "--http-port", "80", "--hostname", HOST,
                "--certmode", "letsencrypt", "--certdir", str(certdir), "--acme-directory", DIRECTORY,
                "--acme-ca-file", self.wfe_ca, "--acme-email", "ops@wgc.test", "--open-relay", "--no-stun",
                "--metrics-addr", "127.0.0.1:9090", *args]
        log = open(self.tmp / f"derper{len(self.derpers)}.log", "wb")
        proc = self.ns.popen(*argv, env=ENV, cwd=ROOT, stderr=log, text=True)
        proc.log_path = log.name
        self.derpers.append(proc)
        line = _readline(proc.stdout, 20)
        assert line.startswith("derper ready"), f"derper did not start: {line!r} {self.log(proc)}"
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        with open(proc.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def stop(self, proc: subprocess.Popen) -> None:
        proc.terminate()
        proc.wait(40)

    def wait_for(self, what: str, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what} within {timeout} s; {self.tails()}"
            time.sleep(0.3)

    def pebble_text(self) -> str:
        return self.pebble_log_path.read_text(errors="replace")

    def tails(self) -> str:
        logs = [self.log(p)[-3000:] for p in self.derpers]
        return "derper: " + " | ".join(logs) + " pebble: " + self.pebble_text()[-2000:]

    def close(self) -> None:
        try:
            if getattr(self, "agent", None) is not None and self.agent.poll() is None:
                self.agent.stdin.close()
        except OSError:
            pass
        self.ns.delete()
        for fh in (getattr(self, "dns_log", None), getattr(self, "pebble_log", None)):
            if fh is not None:
                fh.close()
