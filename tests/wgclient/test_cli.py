"""The `wgc` command line without root: genkey/pubkey against the real `wg`, and clean one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.prereq import require_binary
from wgclient import keys

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="


def wgc(*args: str, stdin: bytes = b"", env: dict | None = None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "wgclient.cli", *args], input=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, env=e, timeout=30)


def wg(*args: str, stdin: bytes = b"", stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    require_binary("wg")
    return subprocess.run(["wg", *args], input=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=10)


@pytest.fixture
def dirs(tmp_path):
    env = {"WGC_PID_DIR": str(tmp_path / "pid"), "WGC_LOG_DIR": str(tmp_path / "log"),
           "WGC_RUN_DIR": str(tmp_path / "run")}
    return tmp_path, env


def test_genkey_format_and_pubkey_pipeline():
    out = wgc("genkey")
    assert out.returncode == 0 and len(out.stdout) == 45 and out.stdout.endswith(b"\n")
    key = keys.key_from_base64(out.stdout.strip())
    assert keys.clamp(key) == key
    ours = wgc("pubkey", stdin=out.stdout)
    theirs = wg("pubkey", stdin=out.stdout)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (0, ours.stdout)


@pytest.mark.parametrize("stdin", [b"", b"abc", PRIV.encode(), PRIV.encode() + b"\n\n \t", PRIV.encode() + b" x",
                                   b" " + PRIV.encode(), PRIV[:42].encode() + b"A=", PRIV.encode()[:-1] + b"A",
                                   b"\xff" * 44])
def test_pubkey_same_as_wg(stdin):
    ours, theirs = wgc("pubkey", stdin=stdin), wg("pubkey", stdin=stdin)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    assert ours.stderr == theirs.stderr.replace(b"wg:", b"wgc:")


@pytest.mark.parametrize("tail", [b"\0" * 200000 + b"\n", b" " * 200000 + b"x"], ids=["nuls", "spaces-then-x"])
def test_pubkey_long_trailing_input_same_as_wg(tail):
    stdin = PRIV.encode() + tail
    ours, theirs = wgc("pubkey", stdin=stdin), wg("pubkey", stdin=stdin)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    assert ours.stderr == theirs.stderr.replace(b"wg:", b"wgc:")


@pytest.mark.parametrize("cmd", ["genkey", "pubkey"])
def test_extra_arguments_like_wg(cmd):
    ours, theirs = wgc(cmd, "extra"), wg(cmd, "extra")
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == theirs.stderr.replace(b"Usage: wg", b"Usage: wgc")


def test_genkey_warns_about_world_readable_file_like_wg(tmp_path):
    for prog in ("wg", "wgc"):
        path = tmp_path / f"{prog}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            result = (wg if prog == "wg" else wgc)("genkey", stdout=f)
        assert result.returncode == 0
        assert result.stderr == (b"Warning: writing to world accessible file.\n"
                                 b"Consider setting the umask to 077 and trying again.\n")
        assert len(path.read_bytes()) == 45


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("wgc: ") and "Traceback" not in err, err
    return err


def test_bad_config_names_file_line_key_and_creates_nothing(dirs):
    tmp, env = dirs
    conf = tmp / "wgbad0.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/24\n\n[Peer]\nPublicKey = nope\n")
    os.chmod(conf, 0o600)
    err = one_line_error(wgc("up", str(conf), env=env))
    assert err == f"wgc: {conf}:6: PublicKey: not a valid base64 key of 32 bytes\n"
    assert not (tmp / "pid").exists() and not (tmp / "run").exists() and not (tmp / "log").exists()


@pytest.mark.parametrize("args,fragment", [
    (["up", "/nonexistent/wg9.conf"], "cannot read"),
    (["down", "wgnotup0"], "wgnotup0 is not up"),
    (["down", "bad/name"], "invalid interface name"),
    (["frobnicate"], "invalid choice"),
    (["up"], "the following arguments are required: config"),
    (["up", "x.conf", "--nope"], "unrecognized arguments"),
])
def test_user_mistakes_are_one_line(dirs, args, fragment):
    _, env = dirs
    assert fragment in one_line_error(wgc(*args, env=env))


def test_bad_derpmap_is_clean_error_and_creates_nothing(dirs):
    tmp, env = dirs
    conf = tmp / "wgopt0.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {PRIV}\n")
    os.chmod(conf, 0o600)
    err = one_line_error(wgc("up", str(conf), "--foreground", "--derpmap", "http://127.0.0.1:1/map", env=env))
    assert "DERP map" in err and "127.0.0.1:1" in err
    bad = tmp / "map.json"
    bad.write_text("{not json")
    err = one_line_error(wgc("up", str(conf), "--foreground", "--derpmap", str(bad), env=env))
    assert "map" in err.lower()
    assert not (tmp / "pid" / "wgopt0.pid").exists()


def test_unknown_derp_region_hint_names_line(dirs):
    tmp, env = dirs
    dm = tmp / "map.json"
    dm.write_text(json.dumps({"Regions": {"900": {"RegionID": 900, "RegionCode": "lab", "Nodes": [
        {"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "DERPPort": 1}]}}}))
    conf = tmp / "wgopt1.conf"
    peer = keys.key_to_base64(keys.public_key(bytes(range(1, 33))))
    conf.write_text(f"[Interface]\nPrivateKey = {PRIV}\n\n[Peer]\nPublicKey = {peer}\nDerpRegion = nowhere\n")
    os.chmod(conf, 0o600)
    err = one_line_error(wgc("up", str(conf), "--foreground", "--derpmap", str(dm), env=env))
    assert f"{conf}:6: DerpRegion: no region 'nowhere'" in err and "900 (lab)" in err
    assert not (tmp / "pid" / "wgopt1.pid").exists()


def test_no_command_prints_help():
    result = wgc()
    assert result.returncode == 1 and b"usage: wgc" in result.stderr


@pytest.mark.parametrize("command,module", [("derper", "derp.aio.derper"), ("netcheck", "wgclient.cli.netcheck")])
def test_subcommands_dispatch_to_their_modules(command, module):
    import importlib.util
    if importlib.util.find_spec(module) is None:
        err = one_line_error(wgc(command, "--help"))
        assert "not available" in err
        return
    result = wgc(command, "--help")
    assert result.returncode == 0 and f"usage: wgc {command}".encode() in result.stdout


def test_endpoint_names_resolve_like_wg():
    from wgclient.cli.main import resolve_endpoint
    host, port = resolve_endpoint("localhost", 51820)     # /etc/hosts: no DNS traffic
    assert host in ("127.0.0.1", "::1") and port == 51820


def test_version_comes_from_the_package_metadata_and_matches_pyproject():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    result = wgc("--version")
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.decode() == f"wgc {project['version']}\n"
    assert b"--version" in wgc("--help").stdout


def test_license_file_matches_pyproject():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["license"] == {"text": "MIT"}
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the wgc authors\n" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
