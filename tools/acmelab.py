"""An ACME test CA in its own network namespace, shared by the ACME tests (tests/derp/test_derp_acme.py)
and the DERP benchmark's certificate comparison (`tools.bench derp --compare-acme`).

Inside one fresh namespace: Debian's `pebble` (Let's Encrypt's test CA) on 127.0.0.1:14000 with its own
HTTPS certificate from a throwaway test CA, `pebble-challtestsrv` as pebble's mock DNS (every name answers
127.0.0.1 unless overridden through `set_dns`), and `wgc derper --certmode letsencrypt` processes on
127.0.0.1:443/:80 for HOST. `inside()` moves the calling thread into the namespace, so sockets made (and
processes forked or spawned) there live in it. Every wait is bounded; `close()` deletes the namespace
with every process in it, also after a failed start.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from derp.aio.certs import make_ca, make_cert, write_pair
from tools.natlab.netns import Namespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "derp.wgc.test"
DIRECTORY = "https://127.0.0.1:14000/dir"
DNS_MGMT = "http://127.0.0.1:8055"
ENV = dict(os.environ, PYTHONPATH=ROOT)
CLONE_NEWNET = 0x40000000
BINARIES = ("pebble", "pebble-challtestsrv", "ip")


def readline(stream, timeout: float) -> str:
    """One line from a pipe, or "" when none comes within `timeout` seconds."""
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ""


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class AcmeLab:
    def __init__(self, workdir, validity: int = 3600) -> None:
        self.tmp = pathlib.Path(workdir)
        self.derpers: list[subprocess.Popen] = []
        self.ns = Namespace.create("acme")
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
        deadline = time.monotonic() + 20
        while True:   # pebble is up once its directory answers over verified HTTPS
            status, body = self.fetch(DIRECTORY, ca=self.wfe_ca)
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pebble did not come up: {body} {self.pebble_text()[-2000:]}")
            time.sleep(0.2)
        status, root = self.fetch("https://127.0.0.1:15000/roots/0", ca=self.wfe_ca)
        if status != 200:
            raise RuntimeError(f"pebble's root CA: HTTP {status} {root}")
        self.root_ca = str(d / "pebble-root.pem")
        (d / "pebble-root.pem").write_text(root)
        self.derpmap = str(d / "derpmap.json")
        node = {"Name": "900a", "RegionID": 900, "HostName": HOST, "IPv4": "127.0.0.1", "IPv6": "none"}
        (d / "derpmap.json").write_text(json.dumps({"Regions": {"900": {"RegionID": 900, "RegionCode": "acme",
                                                                         "Nodes": [node]}}}))

    # ---- inside the namespace -------------------------------------------------------------------------
    @contextlib.contextmanager
    def inside(self):
        """Run the body with the calling thread in the lab's namespace (back in its own one afterwards)."""
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        try:
            _setns(f"/var/run/netns/{self.ns.name}")
            try:
                yield self
            finally:
                if ctypes.CDLL(None, use_errno=True).setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the original network namespace")
        finally:
            os.close(home)

    def fetch(self, url: str, ca: str | None = None, body: str | None = None) -> tuple[int, str]:
        """(status, text) of a GET (POST with `body`) from inside the namespace; status 0 when unreachable."""
        data = body.encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
        ctx = ssl.create_default_context(cafile=ca) if ca else None
        try:
            with self.inside(), urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")
        except (OSError, ssl.SSLError) as exc:
            return 0, str(exc)

    def set_dns(self, address: str | None) -> None:
        """Point HOST at `address` in pebble's DNS (None: back to the default 127.0.0.1)."""
        if address is None:
            status, text = self.fetch(f"{DNS_MGMT}/clear-a", body=json.dumps({"host": HOST + "."}))
        else:
            status, text = self.fetch(f"{DNS_MGMT}/add-a",
                                      body=json.dumps({"host": HOST + ".", "addresses": [address]}))
        if status != 200:
            raise RuntimeError(f"pebble-challtestsrv: HTTP {status} {text}")

    def serving(self, port: int = 443) -> bool:
        """Whether 127.0.0.1:port serves HOST a chain that verifies against pebble's root."""
        ctx = ssl.create_default_context(cafile=self.root_ca)
        try:
            with self.inside():
                raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            with raw, ctx.wrap_socket(raw, server_hostname=HOST):
                return True
        except (OSError, ssl.SSLError):
            return False

    # ---- derper -------------------------------------------------------------------------------------
    def derper(self, certdir, *args: str) -> subprocess.Popen:
        """`wgc derper --certmode letsencrypt` for HOST on 127.0.0.1:443 (+ :80); later `args` win."""
        argv = [sys.executable, "-m", "derp", "-a", "127.0.0.1:443", "--http-port", "80", "--hostname", HOST,
                "--certmode", "letsencrypt", "--certdir", str(certdir), "--acme-directory", DIRECTORY,
                "--acme-ca-file", self.wfe_ca, "--acme-email", "ops@wgc.test", "--open-relay", "--no-stun",
                "--metrics-addr", "127.0.0.1:9090", *args]
        log = open(self.tmp / f"derper{len(self.derpers)}.log", "wb")
        proc = self.ns.popen(*argv, env=ENV, cwd=ROOT, stderr=log, text=True)
        log.close()
        proc.log_path = log.name
        self.derpers.append(proc)
        line = readline(proc.stdout, 20)
        if not line.startswith("derper ready"):
            raise RuntimeError(f"derper did not start: {line!r} {self.log(proc)}")
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
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout} s; {self.tails()}")
            time.sleep(0.3)

    def pebble_text(self) -> str:
        return self.pebble_log_path.read_text(errors="replace") if hasattr(self, "pebble_log_path") else ""

    def tails(self) -> str:
        logs = [self.log(p)[-3000:] for p in self.derpers]
        return "derper: " + " | ".join(logs) + " pebble: " + self.pebble_text()[-2000:]

    def close(self) -> None:
        self.ns.delete()
        for fh in (getattr(self, "dns_log", None), getattr(self, "pebble_log", None)):
            if fh is not None:
                fh.close()
