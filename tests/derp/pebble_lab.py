"""The ACME lab of tools/acmelab.py (pebble, its mock DNS and `wgc derper --certmode letsencrypt` in a
network namespace) plus a `netns_agent` that speaks HTTP(S)/TLS/DERP inside it for the tests: the served
leaf, DERP clients of the lab's map kept open across steps, and derper's metrics.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tools.acmelab import HOST, ROOT, AcmeLab, ENV, readline

__all__ = ["HOST", "PebbleLab"]


class PebbleLab(AcmeLab):
    def __init__(self, tmp_path, validity: int = 3600) -> None:
        super().__init__(tmp_path, validity)
        try:
            self.agent = self.ns.popen(sys.executable, os.path.join(ROOT, "tests", "derp", "netns_agent.py"),
                                       env=ENV, cwd=ROOT, stdin=subprocess.PIPE, text=True)
            assert '"ready"' in readline(self.agent.stdout, 20), "the netns agent did not start"
        except BaseException:
            self.close()
            raise

    def call(self, op: str, timeout: float = 40, **kw) -> dict:
        self.agent.stdin.write(json.dumps(dict(kw, op=op)) + "\n")
        self.agent.stdin.flush()
        line = readline(self.agent.stdout, timeout)
        assert line, f"the netns agent did not answer {op} within {timeout} s"
        return json.loads(line)

    def leaf(self, alpn: list[str] | None = None) -> dict:
        out = self.call("leaf", host="127.0.0.1", port=443, sni=HOST, ca=self.root_ca, alpn=alpn)
        assert "error" not in out, out
        return out

    def metrics(self) -> dict[str, float]:
        _, body = self.fetch("http://127.0.0.1:9090/metrics")
        values = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def close(self) -> None:
        try:
            if getattr(self, "agent", None) is not None and self.agent.poll() is None:
                self.agent.stdin.close()
        except OSError:
            pass
        super().close()
