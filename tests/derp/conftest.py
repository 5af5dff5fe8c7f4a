"""Fixtures for DERP tests: a private CA and server certificate, and `wgc derper` subprocesses that are
always stopped (even when a test fails)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

import pytest

from derp.aio.certs import make_ca, make_cert, write_pair

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Derper:
    proc: subprocess.Popen
    addr: str
    port: int
    metrics: str
    key: str
    tls: bool
    stderr_path: str
    ready: str = ""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/derp"

    def log(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """certdir/127.0.0.1.crt|.key signed by a private CA at ca.pem (certmode manual, hostname 127.0.0.1)."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    (d / "ca.pem").write_bytes(ca.cert_pem)
    certdir = d / "certs"
    certdir.mkdir()
    write_pair(make_cert(["127.0.0.1"], ca), str(certdir / "127.0.0.1.crt"), str(certdir / "127.0.0.1.key"))
    return {"ca": str(d / "ca.pem"), "certdir": str(certdir)}


def _read_ready(proc: subprocess.Popen, timeout: float) -> str:
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else ""


@pytest.fixture
def derper(tmp_path, pki):
    """derper(*args, tls=True) starts `python -m derp` on 127.0.0.1 with an ephemeral port."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, tls: bool = True, port: int = 0) -> Derper:
        argv = [sys.executable, "-m", "derp", "-a", f"127.0.0.1:{port}", "--no-stun", "--metrics-addr",
                "127.0.0.1:0", "--http-port", "0"]
        if tls:
            argv += ["--certmode", "manual", "--hostname", "127.0.0.1", "--certdir", pki["certdir"]]
        else:
            argv += ["--certmode", "none"]
        argv += list(args)
        err = tmp_path / f"derper{len(procs)}.log"
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(err, "wb"), text=True, cwd=ROOT,
                                start_new_session=True)
        procs.append(proc)
        line = _read_ready(proc, 15)
        if not line.startswith("derper ready"):
            proc.wait(5)
            raise AssertionError(f"derper did not start: {line!r} {err.read_text()}")
        fields = dict(p.split("=", 1) for p in line.split()[2:])
        host, _, port = fields["addr"].rpartition(":")
        return Derper(proc, host, int(port), fields["metrics"], fields["key"], fields["tls"] == "yes", str(err),
                      line.strip())

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
