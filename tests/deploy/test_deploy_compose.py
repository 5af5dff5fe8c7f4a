"""deploy/compose.yaml: its shape is nefia-derp's (ports, metrics on the host's loopback, 256M, restart policy,
read-only allowed keys, the token from the environment), and its `command:` with its environment, volumes,
read-only root and sysctl runs on the image built from deploy/Dockerfile: healthy, serving the DERP map and
detailed /healthz with the token, the certificate's expiry in /metrics."""
from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess

import pytest
import yaml

from container import Run, script
from deploy_paths import DEPLOY
from derp.aio.certs import cert_not_after, make_ca, make_cert, write_pair
from sandbox import Sandbox

pytestmark = [pytest.mark.timeout(900), pytest.mark.netns]
TOKEN = "t0ken-" + "x" * 26


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} in every string of `value`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        return arg if op == ":-" else ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[?-])([^}]*))?\}", one, value)


def env_file(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def service() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["derper"]


def test_compose_shape() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svc = doc["services"]["derper"]
    assert set(svc["ports"]) == {"443:443/tcp", "443:443/udp", "80:80/tcp", "3478:3478/udp", "127.0.0.1:9090:9090/tcp"}
    assert svc["deploy"]["resources"]["limits"]["memory"] == "256M"
    assert svc["restart"] == "unless-stopped"
    assert "./allowed-keys:/etc/derper/allowed-keys:ro" in svc["volumes"]
    assert all(v.endswith(":ro") for v in svc["volumes"] if v.startswith("./"))
    assert svc["environment"]["WGC_DERPER_METRICS_TOKEN"].startswith("${WGC_DERPER_METRICS_TOKEN:?")
    assert "--metrics-token" not in svc["command"]  # never on a command line (ps shows it)
    assert svc["cap_drop"] == ["ALL"] and "cap_add" not in svc and svc["read_only"] is True
    assert "no-new-privileges:true" in svc["security_opt"]
    assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert set(doc["volumes"]) == {"derper-state"}


def test_compose_needs_its_variables() -> None:
    with pytest.raises(ValueError, match="DERP_HOSTNAME"):
        interpolate(service(), {"WGC_DERPER_METRICS_TOKEN": TOKEN})
    with pytest.raises(ValueError, match="WGC_DERPER_METRICS_TOKEN"):
        interpolate(service(), {"DERP_HOSTNAME": "relay.example.net"})


def test_compose_command_runs_on_the_image(image, tmp_path) -> None:
    img, layer = image
    env = env_file((DEPLOY / "env.example").read_text()) | {"WGC_DERPER_METRICS_TOKEN": TOKEN}
    svc = interpolate(service(), env)
    box = Sandbox(tmp_path / "run", layers=(layer,), hosts={"relay.example.net": "127.0.0.1"})
    files = box.share / "compose"
    (files / "certs").mkdir(parents=True)
    ca = make_ca()
    (box.share / "ca.crt").write_bytes(ca.cert_pem)
    crt, key = files / "certs" / "relay.example.net.crt", files / "certs" / "relay.example.net.key"
    write_pair(make_cert(["relay.example.net"], ca), str(crt), str(key))
    os.chown(key, 10001, 10001)   # what docs/deploy.md says to do: the key readable by the container's user
    os.chmod(key, 0o400)
    (files / "allowed-keys").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    derpmap = {"Regions": {"900": {"RegionID": 900, "RegionCode": "home", "Nodes": [
        {"Name": "900a", "RegionID": 900, "HostName": "relay.example.net"}]}}}
    (files / "derpmap.json").write_text(json.dumps(derpmap))
    volumes = []
    for spec in svc["volumes"]:
        src, dst, *mode = spec.split(":")
        source = dst if not src.startswith("./") else "/mnt/compose/" + src[2:]
        volumes.append((source, dst, mode == ["ro"]))
    run = Run(argv=svc["command"], env={k: str(v) for k, v in svc["environment"].items()}, volumes=volumes,
              read_only=svc["read_only"], sysctls={k: str(v) for k, v in svc["sysctls"].items()},
              tmpfs=svc["tmpfs"])
    bearer = shlex.quote(f"Authorization: Bearer {TOKEN}")
    after = "\n".join([
        "export CURL_CA_BUNDLE=/mnt/ca.crt",
        "curl -fsS https://relay.example.net/derpmap/default > /mnt/served-map.json",
        f"curl -fsS -H {bearer} https://relay.example.net/healthz > /mnt/details.json",
        "curl -s -o /dev/null -w 'wrong=%{http_code}\\n' -H 'Authorization: Bearer nope' "
        "https://relay.example.net/healthz",
        "curl -fsS http://127.0.0.1:9090/metrics | grep '^derp_tls_cert_expiry_timestamp_seconds ' || true",
        "touch /etc/derper/allowed-keys 2>/dev/null && echo allowed-keys-writable || true",
        "as_user touch /var/lib/derper/x && echo state-writable",
        "as_user touch /opt/x 2>/dev/null && echo root-writable || true",
    ])
    out = box.check(script(img, run, after), timeout=120)
    assert "HEALTHY" in out and "wrong=401" in out and "state-writable" in out
    assert "allowed-keys-writable" not in out and "root-writable" not in out
    assert json.loads((box.share / "served-map.json").read_text()) == derpmap
    assert json.loads((box.share / "details.json").read_text())["status"] == "ok"
    gauge = re.search(r"^derp_tls_cert_expiry_timestamp_seconds (\S+)$", out, re.M)
    assert gauge and float(gauge.group(1)) == pytest.approx(cert_not_after(str(crt)))
