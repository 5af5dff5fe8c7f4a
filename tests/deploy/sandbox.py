"""A throwaway root for the deployment tests: `Sandbox.run(script)` runs a bash script as root in new mount
and PID namespaces (and a new network namespace unless `network=True`) in which

* /etc, /opt, /var, /usr/local and /srv are overlays: the script sees the host's files, its writes land in the
  sandbox's own directory (`layers` stacks the writes of earlier sandboxes below: an image built by one
  sandbox, run by another);
* /tmp and /run are empty tmpfs, /mnt is the sandbox's `share` directory (the script runs there);
* loopback is up and `hosts` names resolve through /etc/hosts (network namespace only);
* /dev/net/tun is usable by any user, as on a stock kernel (the host's node may be root-only);
* tests/deploy/fake_systemctl.py answers for `systemctl` and `journalctl` (no systemd runs here).

Every process the script starts dies with the PID namespace when the script ends or the timeout hits, and
`cleanup()` removes the directory: nothing on the host changes.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
OVERLAID = ("etc", "opt", "var", "usr/local", "srv")
PATH = "/mnt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Sandbox:
    def __init__(self, root: Path, layers: tuple[Path, ...] = (), hosts: dict[str, str] | None = None) -> None:
        self.root = root
        self.layers = layers          # earlier sandboxes' `up` directories, topmost first
        self.hosts = hosts or {}
        self.share = root / "share"
        self.up = root / "up"
        for d in OVERLAID:
            (self.up / d).mkdir(parents=True, exist_ok=True)
            (root / "work" / d).mkdir(parents=True, exist_ok=True)
        bin_dir = self.share / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name in ("systemctl", "journalctl"):
            target = bin_dir / name
            shutil.copyfile(HERE / "fake_systemctl.py", target)
            target.chmod(0o755)

    def _init_script(self, network: bool) -> str:
        lines = ["set -euo pipefail"]
        for d in OVERLAID:
            lower = ":".join([str(layer / d) for layer in self.layers if (layer / d).is_dir()] + [f"/{d}"])
            opts = f"lowerdir={lower},upperdir={self.up / d},workdir={self.root / 'work' / d}"
            lines.append(f"mount -t overlay overlay -o {shlex.quote(opts)} /{d}")
        lines += [f"mount --bind {shlex.quote(str(self.share))} /mnt",
                  "mount -t tmpfs -o mode=1777 tmpfs /tmp",
                  "mount -t tmpfs -o mode=0755 tmpfs /run",
                  "mknod -m 0666 /run/.tun c 10 200 && mount --bind /run/.tun /dev/net/tun"]
        if not network:
            hosts = "".join(f"{ip} {name}\n" for name, ip in self.hosts.items())
            lines += ["ip link set lo up",
                      f"printf '127.0.0.1 localhost\\n::1 localhost ip6-localhost\\n%s' {shlex.quote(hosts)} "
                      "> /etc/hosts"]
        lines += ["cd /mnt", f"exec env -i PATH={PATH} HOME=/root LANG=C.UTF-8 TERM=dumb \"$@\""]
        return "\n".join(lines) + "\n"

    def run(self, script: str, timeout: float, env: dict[str, str] | None = None,
            network: bool = False) -> subprocess.CompletedProcess:
        """Run `script` with bash -euo pipefail; returns the finished process (stdout, stderr as text)."""
        init = self.root / "init.sh"
        init.write_text(self._init_script(network))
        (self.share / "script.sh").write_text(script)
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        cmd = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
               "--mount-proc"] + ([] if network else ["--net"])
        cmd += ["bash", str(init), "env", *extra, "bash", "-euo", "pipefail", "/mnt/script.sh"]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            # unshare --kill-child: killing it takes the PID namespace and all it started with it
            raise AssertionError(f"sandbox script timed out after {timeout} s\nstdout:\n{exc.stdout}\n"
                                 f"stderr:\n{exc.stderr}") from None

    def check(self, script: str, timeout: float, **kw) -> str:
        """`run`, asserting exit 0; returns stdout."""
        done = self.run(script, timeout, **kw)
        assert done.returncode == 0, (f"sandbox script failed ({done.returncode})\nstdout:\n{done.stdout[-6000:]}\n"
                                      f"stderr:\n{done.stderr[-6000:]}")
        return done.stdout

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def copy_checkout(src: Path, dest: Path) -> None:
    """The files of a checkout (what `git clone` gives, with this worktree's uncommitted edits), without the
    venv, caches and build leftovers."""
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist",
                                    ".pytest_cache", ".hypothesis")
    shutil.copytree(src, dest, ignore=ignore, symlinks=True)


def have_tools(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
