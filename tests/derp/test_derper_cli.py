"""`wgc derper` as a user meets it on the command line: every bind error and every bad flag, file or
certificate is one line `wgc: ...` (never a traceback) and nothing stays bound; --help shows every default;
the self-signed map node is complete; the node key file's mode is checked and the key never logged; the
metrics token comes from a flag, a file or the environment."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys

import pytest

from derp.aio import derper as D
from derp.aio.derper_listen import ListenError
from derp.aio.certs import make_cert, write_pair
from derp.aio.client import DerpClient, targets_for_region
from derp.derpmap import parse_derpmap

from derp_support import http_get, new_key

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUIET = ["--no-stun", "--metrics-addr", "off", "--http-port", "-1"]


def wgc_derper(*args: str, env: dict | None = None, timeout: float = 30, **popen) -> subprocess.CompletedProcess:
    """`python -m wgclient.cli derper ARGS` that is expected to exit by itself (killed after `timeout`)."""
    return subprocess.run([sys.executable, "-m", "wgclient.cli", "derper", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})}, **popen)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "derper ready" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wgc: "), proc.stderr
    return lines[0]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busy(kind: int) -> socket.socket:
    """A socket of ours on a free 127.0.0.1 port (TCP listening or UDP bound) that derper cannot take."""
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        s.listen()
    return s


# ---- bind errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["DERP", "HTTP", "STUN", "metrics"])
def test_a_busy_port_is_one_line_naming_the_address(what, pki) -> None:
    with busy(socket.SOCK_DGRAM if what == "STUN" else socket.SOCK_STREAM) as s:
        port = s.getsockname()[1]
        ports = {"DERP": 0, "HTTP": 0, "STUN": 0, "metrics": 0, what: port}
        proc = wgc_derper("-a", f"127.0.0.1:{ports['DERP']}", "--http-port", str(ports["HTTP"]),
                          "--metrics-addr", f"127.0.0.1:{ports['metrics']}",
                          *(["--stun-port", str(port)] if what == "STUN" else ["--no-stun"]),
                          "--certmode", "manual", "--hostname", "127.0.0.1", "--certdir", pki["certdir"],
                          "--open-relay")
    assert proc.returncode == 1
    assert one_line_error(proc) == f"wgc: cannot listen on 127.0.0.1:{port} ({what}): address already in use"


def test_a_failed_bind_closes_the_listeners_already_bound(pki) -> None:
    """DERP, HTTP and STUN are bound before metrics fails: all three are free again afterwards."""
    derp_port, http_port, stun_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    with busy(socket.SOCK_STREAM) as s:
        args = D.build_parser().parse_args([
            "-a", f"127.0.0.1:{derp_port}", "--http-port", str(http_port), "--stun-port", str(stun_port),
            "--metrics-addr", f"127.0.0.1:{s.getsockname()[1]}", "--certmode", "manual", "--hostname",
            "127.0.0.1", "--certdir", pki["certdir"], "--open-relay"])
        with pytest.raises(ListenError, match=r"\(metrics\)") as failed:
            asyncio.run(D.serve(args))
    assert failed.value.__traceback__ is not None  # the frames (and whatever they hold) are still alive
    for kind, port in ((socket.SOCK_STREAM, derp_port), (socket.SOCK_STREAM, http_port),
                       (socket.SOCK_DGRAM, stun_port)):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", port))  # OSError (address in use) if derper left it bound


# ---- --help --------------------------------------------------------------------------------------------

def _help_entries(text: str) -> dict[str, str]:
    """The options section of --help: each flag -> its whole entry (flags, metavar and help text)."""
    entries: list[tuple[list[str], str]] = []
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            head = re.split(r"\s{2,}", line.strip())[0]
            entries.append((re.findall(r"(?:^|, )(-[-\w]+)", head), line.strip()))
        elif line.strip() and entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
    return {flag: entry for flags, entry in entries for flag in flags}


def test_help_shows_every_default_and_every_flag_has_help() -> None:
    for action in D.build_parser()._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    proc = wgc_derper("--help", env={"COLUMNS": "100", D.TOKEN_ENV: "env-s3cret-token"})
    assert proc.returncode == 0, proc.stderr
    entries = _help_entries(proc.stdout)
    assert "--metrics-token-file" in entries and "--stun" in entries and "--no-stun" in entries
    for flag, default in (("--certmode", "manual when the DERP port is 443, else none"), ("--hostname", "localhost"),
                          ("--http-port", "80"), ("--stun-port", "3478"), ("--metrics-addr", "127.0.0.1:9090"),
                          ("--addr", ":443"), ("--stun", "True"), ("--conn-rate", "5.0"), ("--shutdown-timeout", "30s"),
                          ("--tcp-keepalive-time", "10m"), ("--tcp-user-timeout", "15s"),
                          ("--verify-client-url-fail-open", "True"), ("--keepalive-interval", "60s"),
                          ("--cert-watch-interval", "2s"), ("--acme-challenge", "tls-alpn-01"),
                          ("--acme-renew-before", "33%"), ("--acme-retry", "1m")):
        assert f"(default: {default})" in entries[flag], (flag, entries[flag])
    assert "env-s3cret-token" not in proc.stdout


# ---- user mistakes: one line, never a traceback --------------------------------------------------------

def _cert_files(d, crt: bytes | None, key: bytes | None) -> str:
    d.mkdir()
    if crt is not None:
        (d / "127.0.0.1.crt").write_bytes(crt)
    if key is not None:
        (d / "127.0.0.1.key").write_bytes(key)
    return str(d)


BAD_FLAGS = [
    (["--http-port", "abc"], "--http-port: not a number"),
    (["--stun-port", "70000"], "--stun-port: 70000 is out of range"),
    (["--conn-rate", "-1"], "--conn-rate: -1 is out of range"),
    (["--shutdown-timeout", "nan"], "--shutdown-timeout: nan is out of range"),
    (["--max-clients", "many"], "--max-clients: not a number"),
    (["--certmode", "acme"], "--certmode: invalid choice"),
    (["--hostname", "../etc/x"], "--hostname: not a host name"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["-a", "127.0.0.1:99999"], "port out of range in address"),
    (["-a", "127.0.0.1:http"], "bad port in address"),
    (["--metrics-addr", "127.0.0.1:x"], "bad port in address"),
    (["--mesh-with", "derp2.example.net"], "--mesh-with needs --mesh-psk-file"),
    (["--metrics-token", "a", "--metrics-token-file", "/dev/null"], "not both"),
    (["-a", "localhost:0", "--stun", "--stun-port", "0"], "must be an IP, not 'localhost'"),
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_value_is_one_line(argv, message) -> None:
    line = one_line_error(wgc_derper("-a", "127.0.0.1:0", "--certmode", "none", "--open-relay", *QUIET, *argv))
    assert message in line


def test_a_stun_port_out_of_range_is_one_line_not_a_traceback() -> None:
    """The bug of the issue: natprobe's own UsageError escaped as a traceback."""
    line = one_line_error(wgc_derper("-a", "127.0.0.1:0", "--certmode", "none", "--open-relay",
                                     "--metrics-addr", "off", "--stun-port", "65536"))
    assert "--stun-port" in line


def test_bad_certificates_in_manual_mode_are_one_line(tmp_path, pki) -> None:
    pair, other = make_cert(["127.0.0.1"]), make_cert(["127.0.0.1"])
    cases = [
        (str(tmp_path / "nonexistent"), "does not exist (--certmode manual needs"),
        (_cert_files(tmp_path / "nokey", pair.cert_pem, None), "127.0.0.1.key does not exist"),
        (_cert_files(tmp_path / "garbage", b"not a certificate\n", pair.key_pem), "is not PEM"),
        (_cert_files(tmp_path / "keyinplaceofcert", pair.key_pem, pair.key_pem), "is not PEM"),
        (_cert_files(tmp_path / "mismatch", pair.cert_pem, other.key_pem), "does not belong to certificate"),
        (_cert_files(tmp_path / "truncated", pair.cert_pem[:80] + b"\n-----END CERTIFICATE-----\n",
                     pair.key_pem), "cannot load certificate"),
    ]
    (tmp_path / "dircert").mkdir()
    (tmp_path / "dircert" / "127.0.0.1.crt").mkdir()
    write_pair(pair, str(tmp_path / "unused.crt"), str(tmp_path / "dircert" / "127.0.0.1.key"))
    cases.append((str(tmp_path / "dircert"), "is a directory"))
    for certdir, message in cases:
        line = one_line_error(wgc_derper("-a", "127.0.0.1:0", "--certmode", "manual", "--hostname", "127.0.0.1",
                                         "--certdir", certdir, "--open-relay", *QUIET))
        assert message in line and certdir in line, (certdir, line)


def test_an_unreadable_cert_dir_is_one_line(tmp_path, pki) -> None:
    certdir = tmp_path / "private"
    certdir.mkdir()
    write_pair(make_cert(["127.0.0.1"]), str(certdir / "127.0.0.1.crt"), str(certdir / "127.0.0.1.key"))
    certdir.chmod(0)
    try:
        # root reads anything: run as nobody, for whom the directory (and the test's tmp dir) is closed
        as_nobody = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
        line = one_line_error(wgc_derper("-a", "127.0.0.1:0", "--certmode", "manual", "--hostname", "127.0.0.1",
                                         "--certdir", str(certdir), "--open-relay", *QUIET, **as_nobody))
    finally:
        certdir.chmod(0o700)
    assert f"cannot read certificate {certdir}/127.0.0.1.crt: permission denied" in line


def test_bad_derpmap_files_are_one_line(tmp_path) -> None:
    files = {"notjson": b"{not json", "binary": b"\xff\xfe\x00garbage", "badmap": json.dumps(
        {"Regions": {"900": {"RegionID": 901, "Nodes": []}}}).encode(), "deep": b"[" * 100000 + b"]" * 100000}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for path in [*(str(tmp_path / n) for n in files), str(tmp_path / "missing"), str(tmp_path)]:
        line = one_line_error(wgc_derper("-a", "127.0.0.1:0", "--certmode", "none", "--open-relay", *QUIET,
                                         "--derpmap-file", path))
        assert path in line, line


def test_bad_access_and_mesh_files_are_one_line(tmp_path) -> None:
    (tmp_path / "keys").write_text("not-a-key\n")
    (tmp_path / "psk").write_text("abcd\n")
    cases = [(["--allowed-keys-file", str(tmp_path / "keys")], "keys"),
             (["--allowed-keys-file", str(tmp_path / "absent")], "absent"),
             (["--open-relay", "--mesh-with", "b.example", "--mesh-psk-file", str(tmp_path / "psk")], "64 hex"),
             (["--open-relay", "--mesh-with", "b.example", "--mesh-psk-file", str(tmp_path / "nope")], "nope"),
             ([], "refusing to start an open relay")]
    for argv, message in cases:
        line = one_line_error(wgc_derper("-a", "127.0.0.1:0", "--certmode", "none", *QUIET, *argv))
        assert message in line, line


# ---- the self-signed map node --------------------------------------------------------------------------

def _logged_node(log: str) -> dict:
    m = re.search(r"DERP map node: (\{.*\})$", log, re.M)
    assert m, log
    return json.loads(m.group(1))


def test_selfsigned_logs_a_complete_map_node_a_client_can_use(derper) -> None:
    srv = derper("--open-relay", "--certmode", "selfsigned", "--hostname", "127.0.0.1", "--stun",
                 "--stun-port", "0", tls=False)
    node = _logged_node(srv.log())
    stun_port = int(re.search(r"stun=(\d+)", srv.ready).group(1))
    assert node["DERPPort"] == srv.port and node["STUNPort"] == stun_port
    assert node["HostName"] == "127.0.0.1" and node["IPv4"] == "127.0.0.1"
    assert re.fullmatch(r"sha256-raw:[0-9a-f]{64}", node["CertName"])
    # the node as logged, pasted into a map, is all a client needs: DERP over TLS and STUN
    dm = parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "RegionCode": "lab", "Nodes": [node]}}}))
    parsed = dm.regions[900].nodes[0]
    assert (parsed.derp_port, parsed.stun_port, parsed.name) == (srv.port, stun_port, node["Name"])

    async def main():
        c = DerpClient(new_key()[0], targets_for_region(dm.regions[900]), reconnect=False)
        await c.start()
        try:
            assert 0 < await c.ping() < 5
        finally:
            await c.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        txid = os.urandom(12)
        s.sendto(struct.pack(">HHI", 1, 0, 0x2112A442) + txid, (node["IPv4"], node["STUNPort"]))
        assert s.recvfrom(2048)[0][8:20] == txid


def test_selfsigned_without_stun_says_so_in_the_node(derper) -> None:
    srv = derper("--open-relay", "--certmode", "selfsigned", "--hostname", "localhost", tls=False)
    node = _logged_node(srv.log())
    assert node["STUNPort"] == -1 and node["DERPPort"] == srv.port and node["HostName"] == "localhost"
    assert "IPv4" not in node
    assert parse_derpmap(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": [node]}}})).regions[900]


# ---- the node key file (-c) ----------------------------------------------------------------------------

def _run_until_ready(argv: list[str], **popen) -> tuple[str, str]:
    """Start derper, wait for the ready line, SIGTERM it; (stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "wgclient.cli", "derper", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True, **popen)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("derper ready"), proc.stderr.read() if proc.poll() is not None else ready
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        return ready + out, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_key_file_open_to_others_warns_and_new_files_are_0600(tmp_path) -> None:
    keyfile = tmp_path / "sub" / "derper.key"
    base = ["-a", "127.0.0.1:0", "--certmode", "none", "--open-relay", *QUIET, "-c", str(keyfile)]
    _, err = _run_until_ready(base, umask=0)
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600 and "WARNING" not in err
    _, err = _run_until_ready(base)
    assert "WARNING" not in err
    keyfile.chmod(0o644)
    _, err = _run_until_ready(base)
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and str(keyfile) in warnings[0] and "0644" in warnings[0], err


def test_the_private_key_is_never_logged(tmp_path) -> None:
    from derp.keys import parse_private_key
    keyfile = tmp_path / "derper.key"
    out, err = _run_until_ready(["-a", "127.0.0.1:0", "--certmode", "none", "--open-relay", *QUIET, "-v",
                                 "-c", str(keyfile)])
    private = parse_private_key(json.loads(keyfile.read_text())["PrivateKey"])
    import base64
    for form in (private.hex(), base64.b64encode(private).decode()):
        assert form not in out and form not in err
    # a damaged key file: the error names the file but does not quote what is in it
    keyfile.write_text(json.dumps({"PrivateKey": "privkey:" + private.hex()[:-1]}))
    line = one_line_error(wgc_derper("-a", "127.0.0.1:0", "--certmode", "none", "--open-relay", *QUIET,
                                     "-c", str(keyfile)))
    assert str(keyfile) in line and private.hex()[:20] not in line


# ---- the metrics token ---------------------------------------------------------------------------------

def _healthz(port: int, token: str) -> str:
    """'details' (authorized), 'ok' (no token sent counts as anonymous) or the HTTP status."""
    async def get():
        return await http_get(port, "/healthz", {"Authorization": f"Bearer {token}"})
    st, _, body = asyncio.run(get())
    if st == 200:
        return "ok" if body == b"ok\n" else ("details" if json.loads(body)["status"] == "ok" else "?")
    return str(st)


def test_metrics_token_from_a_file_or_the_environment_and_the_flag_wins(derper, tmp_path, monkeypatch) -> None:
    tokenfile = tmp_path / "token"
    tokenfile.write_text("file-token\n")
    tokenfile.chmod(0o600)
    srv = derper("--open-relay", "--metrics-token-file", str(tokenfile), tls=False)
    assert _healthz(srv.port, "file-token") == "details" and _healthz(srv.port, "other") == "401"
    assert "file-token" not in " ".join(srv.proc.args) and "WARNING" not in srv.log()
    monkeypatch.setenv(D.TOKEN_ENV, "env-token")
    srv = derper("--open-relay", tls=False)
    assert _healthz(srv.port, "env-token") == "details"
    srv = derper("--open-relay", "--metrics-token-file", str(tokenfile), tls=False)
    assert _healthz(srv.port, "file-token") == "details" and _healthz(srv.port, "env-token") == "401"
    srv = derper("--open-relay", "--metrics-token", "flag-token", tls=False)
    assert _healthz(srv.port, "flag-token") == "details" and _healthz(srv.port, "env-token") == "401"


def test_metrics_token_file_mistakes(tmp_path) -> None:
    tokenfile = tmp_path / "token"
    tokenfile.write_text("  \n")
    base = ["-a", "127.0.0.1:0", "--certmode", "none", "--open-relay", *QUIET, "--metrics-token-file"]
    assert "is empty" in one_line_error(wgc_derper(*base, str(tokenfile)))
    assert "cannot read metrics token file" in one_line_error(wgc_derper(*base, str(tmp_path / "absent")))
    tokenfile.write_text("s3cret\n")
    tokenfile.chmod(0o640)
    _, err = _run_until_ready([*base, str(tokenfile)])
    assert "0640" in err and str(tokenfile) in err
