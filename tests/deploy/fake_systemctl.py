#!/usr/bin/python3
"""A stand-in for `systemctl` and `journalctl` inside a deployment-test sandbox (tests/deploy/sandbox.py),
where no systemd runs: enough of `systemctl daemon-reload | enable [--now] | start | stop | restart | reload |
status | is-active` and `journalctl -u UNIT` for docs/deploy.md's commands to run verbatim against the unit
files they install in /etc/systemd/system.

`start` checks the unit with `systemd-analyze verify` (any warning fails it), then does what systemd does for
the directives the kit uses: EnvironmentFile= / Environment=, specifiers (%i %I %n %N %p %d %t %S %%), `$VAR`
and `${VAR}` in command lines, DynamicUser= (a fixed unprivileged uid per user name, HOME=/),
StateDirectory= / RuntimeDirectory= / ConfigurationDirectory= (created; the first two owned by that uid),
LoadCredential= (copied mode 0400 into /run/credentials/UNIT; a missing file fails the start),
ExecStartPre= and ExecStart= (the main process in the background; its output is the journal),
ExecReload= with $MAINPID, AmbientCapabilities= / CapabilityBoundingSet= / NoNewPrivileges= (setpriv),
ProtectSystem=strict (every mount read-only but the service's own directories and ReadWritePaths=),
ProtectHome=, PrivateTmp= and MemoryDenyWriteExecute= (prctl PR_SET_MDWE, as systemd >= 253 does). Other
sandboxing directives are not enforced here (`systemd-analyze security` checks them as declared);
Restart= is not emulated.
"""
from __future__ import annotations

import ctypes
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib

UNIT_DIR = "/etc/systemd/system"
UNIT_PATH = (UNIT_DIR, "/lib/systemd/system")
STATE = "/run/fake-systemd"
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
LIST_KEYS = {"Environment", "EnvironmentFile", "LoadCredential", "ExecStartPre", "ExecStart", "ExecReload",
             "ReadWritePaths", "StateDirectory", "RuntimeDirectory", "ConfigurationDirectory",
             "AmbientCapabilities", "CapabilityBoundingSet", "SystemCallFilter", "DeviceAllow"}


class Fail(Exception):
    pass


def split_name(arg: str) -> tuple[str, str, str]:
    """(unit name, file name, instance) for `wgc@wg0`, `wgc-derper.service`, ..."""
    name = arg if arg.endswith(".service") else arg + ".service"
    prefix = name[:-len(".service")]
    if "@" in prefix:
        template, instance = prefix.split("@", 1)
        return name, f"{template}@.service", instance
    return name, name, ""


def parse_unit(path: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        values = current.setdefault(key.strip(), [])
        if value.strip() == "":
            values.clear()
        else:
            values.append(value.strip())
    return sections


class Unit:
    def __init__(self, arg: str) -> None:
        self.name, self.file, self.instance = split_name(arg)
        found = [os.path.join(d, self.file) for d in UNIT_PATH if os.path.exists(os.path.join(d, self.file))]
        if not found:
            raise Fail(f"Unit {self.name} not found.")
        self.path = found[0]
        self.sections = parse_unit(self.path)
        self.service = self.sections.get("Service", {})
        self.prefix = self.name.split("@")[0].removesuffix(".service")

    # -- settings ---------------------------------------------------------------------------------------
    def get(self, key: str, default: str = "") -> str:
        values = self.service.get(key)
        return self.spec(values[-1]) if values else default

    def words(self, key: str) -> list[str]:
        return [w for v in self.service.get(key, []) for w in self.spec(v).split()]

    def yes(self, key: str) -> bool:
        return self.get(key).lower() in ("yes", "true", "1", "on", "strict", "full", "read-only")

    def spec(self, text: str) -> str:
        table = {"i": self.instance, "I": self.instance, "n": self.name, "N": self.name[:-len(".service")],
                 "p": self.prefix, "d": f"/run/credentials/{self.name}", "t": "/run", "S": "/var/lib",
                 "%": "%"}
        return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), text)

    @property
    def user(self) -> str:
        return self.get("User") or self.prefix

    @property
    def uid(self) -> int:
        if not self.yes("DynamicUser"):
            return pwd.getpwnam(self.user).pw_uid if self.get("User") else 0
        return 61184 + zlib.crc32(self.user.encode()) % 4000

    def state_file(self, what: str) -> str:
        return os.path.join(STATE, f"{self.name}.{what}")

    def pid(self) -> int | None:
        try:
            pid = int(open(self.state_file("pid")).read())
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return None
            return pid
        except (OSError, ValueError):
            return None

    # -- environment and command lines ------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "USER": self.user, "LOGNAME": self.user,
               "HOME": "/" if self.uid else "/root", "INVOCATION_ID": "0" * 32}
        dirs = {"StateDirectory": ("STATE_DIRECTORY", "/var/lib"), "RuntimeDirectory": ("RUNTIME_DIRECTORY", "/run"),
                "ConfigurationDirectory": ("CONFIGURATION_DIRECTORY", "/etc")}
        for key, (var, base) in dirs.items():
            if self.words(key):
                env[var] = ":".join(os.path.join(base, d) for d in self.words(key))
        if self.service.get("LoadCredential"):
            env["CREDENTIALS_DIRECTORY"] = f"/run/credentials/{self.name}"
        for item in self.service.get("EnvironmentFile", []):
            item = self.spec(item)
            optional = item.startswith("-")
            path = item.lstrip("-")
            if not os.path.exists(path):
                if optional:
                    continue
                raise Fail(f"{self.name}: Failed to load environment files: {path}: No such file or directory")
            for line in open(path, encoding="utf-8"):
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    k, _, v = line.partition("=")
                    env[k.strip()] = v.strip().strip('"')
        for item in self.service.get("Environment", []):
            for word in shlex.split(self.spec(item)):
                k, _, v = word.partition("=")
                env[k] = v
        return env

    def command(self, line: str, env: dict[str, str]) -> tuple[bool, list[str]]:
        """(failure ignored, argv) for one Exec line, expanded as systemd does."""
        words = shlex.split(self.spec(line))
        ignore = False
        while words and words[0][:1] in "-@+!:":
            ignore |= words[0][0] == "-"
            words[0] = words[0][1:]
        argv: list[str] = []
        for word in words:
            whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
            if whole:
                argv += env.get(whole.group(1), "").split()
            else:
                argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
        return ignore, argv

    # -- sandbox of the service's processes ------------------------------------------------------------
    def writable(self) -> list[str]:
        paths = [os.path.join("/var/lib", d) for d in self.words("StateDirectory")]
        paths += [os.path.join("/run", d) for d in self.words("RuntimeDirectory")]
        paths += [p.lstrip("-") for p in self.words("ReadWritePaths")]
        return paths

    def launcher(self, argv: list[str]) -> list[str]:
        """argv wrapped in: a mount namespace with the unit's file-system protections, then setpriv."""
        script = ["set -e"]
        if self.get("ProtectSystem") == "strict":
            script.append("for m in $(awk '{print $2}' /proc/self/mounts | sort -u); do case $m in "
                          "/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;; *) mount -o remount,bind,ro \"$m\" "
                          "2>/dev/null || true;; esac; done")
            for path in self.writable():
                q = shlex.quote(path)
                script.append(f"mount --bind {q} {q} && mount -o remount,bind,rw {q}")
        if self.yes("PrivateTmp"):
            script.append("mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=1777 tmpfs /var/tmp")
        if self.yes("ProtectHome"):
            script.append("for h in /home /root /run/user; do [ -d $h ] && mount -t tmpfs -o ro,mode=0755 tmpfs $h"
                          " || true; done")
        caps = [c.lower().removeprefix("cap_") for c in self.words("AmbientCapabilities")]
        bounding = [c.lower().removeprefix("cap_") for c in self.words("CapabilityBoundingSet")]
        priv = ["setpriv"]
        if self.uid:
            gid = self.uid if self.yes("DynamicUser") else pwd.getpwuid(self.uid).pw_gid
            priv += [f"--reuid={self.uid}", f"--regid={gid}", "--clear-groups"]
        if caps:
            spec = "-all," + ",".join("+" + c for c in caps)
            priv += [f"--inh-caps={spec}", f"--ambient-caps={spec}"]
        if self.service.get("CapabilityBoundingSet"):
            priv.append("--bounding-set=" + ",".join(["-all"] + ["+" + c for c in bounding]))
        if self.yes("NoNewPrivileges") or self.uid:
            priv.append("--no-new-privs")
        mdwe = ["/usr/bin/python3", os.path.abspath(__file__), "__exec"] if self.yes("MemoryDenyWriteExecute") else []
        script.append("exec " + shlex.join(priv + mdwe + argv))
        return ["unshare", "--mount", "--propagation", "private", "/bin/bash", "-c", "\n".join(script)]

    def run_sync(self, line: str, env: dict[str, str], log) -> None:
        ignore, argv = self.command(line, env)
        done = subprocess.run(self.launcher(argv), env=env, stdout=log, stderr=log, cwd="/")
        if done.returncode and not ignore:
            raise Fail(f"{self.name}: {argv[0]} exited with status {done.returncode}; see journalctl -u {self.name}")

    # -- verbs -----------------------------------------------------------------------------------------
    def verify(self) -> None:
        target = self.path if not self.instance else os.path.join(os.path.dirname(self.path), self.name)
        done = subprocess.run(["systemd-analyze", "verify", target], capture_output=True, text=True, timeout=60)
        if done.returncode or done.stderr.strip():
            raise Fail(f"systemd-analyze verify {self.name}:\n{done.stderr.strip()}")

    def start(self) -> None:
        if self.pid():
            return
        self.verify()
        os.makedirs(STATE, exist_ok=True)
        env = self.environment()
        uid = self.uid
        for d in self.words("ConfigurationDirectory"):
            os.makedirs(os.path.join("/etc", d), exist_ok=True)
        for key, base in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run")):
            mode = int(self.get(key + "Mode", "0755"), 8)
            for d in self.words(key):
                path = os.path.join(base, d)
                os.makedirs(path, exist_ok=True)
                for top, _dirs, files in os.walk(path):
                    for entry in [top] + [os.path.join(top, f) for f in files]:
                        os.lchown(entry, uid, uid)
                os.chmod(path, mode)
        self.load_credentials(uid)
        log = open(self.state_file("log"), "ab")
        for line in self.service.get("ExecStartPre", []):
            self.run_sync(line, env, log)
        lines = self.service.get("ExecStart", [])
        if len(lines) != 1:
            raise Fail(f"{self.name}: Type=simple needs exactly one ExecStart=")
        _, argv = self.command(lines[0], env)
        proc = subprocess.Popen(self.launcher(argv), env=env, stdout=log, stderr=log, cwd="/",
                                start_new_session=True)
        with open(self.state_file("pid"), "w") as fh:
            fh.write(str(proc.pid))
        time.sleep(0.3)
        if proc.poll() is not None:
            raise Fail(f"{self.name}: main process exited, code={proc.returncode}; see journalctl -u {self.name}")

    def load_credentials(self, uid: int) -> None:
        items = self.service.get("LoadCredential", [])
        if not items:
            return
        cred_dir = f"/run/credentials/{self.name}"
        os.makedirs(cred_dir, exist_ok=True)
        for item in items:
            ident, _, src = self.spec(item).partition(":")
            try:
                data = open(src, "rb").read()
            except OSError as exc:
                raise Fail(f"{self.name}: Failed to set up credentials: {src}: {exc.strerror} "
                           "(status=243/CREDENTIALS)") from None
            path = os.path.join(cred_dir, ident)
            with open(path, "wb") as fh:
                fh.write(data)
            os.chown(path, uid, uid)
            os.chmod(path, 0o400)
        os.chown(cred_dir, uid, uid)
        os.chmod(cred_dir, 0o500)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while self.pid() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pid():
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(f"/run/credentials/{self.name}", ignore_errors=True)
        if not self.yes("RuntimeDirectoryPreserve"):
            for d in self.words("RuntimeDirectory"):
                shutil.rmtree(os.path.join("/run", d), ignore_errors=True)

    def reload(self) -> None:
        pid = self.pid()
        if not pid:
            raise Fail(f"Job for {self.name} failed: the unit is not active.")
        env = self.environment() | {"MAINPID": str(pid)}
        with open(self.state_file("log"), "ab") as log:
            for line in self.service.get("ExecReload", []):
                self.run_sync(line, env, log)

    def status(self) -> int:
        pid = self.pid()
        desc = self.spec(self.sections.get("Unit", {}).get("Description", [self.name])[-1])
        print(f"● {self.name} - {desc}")
        print(f"     Loaded: loaded ({self.path})")
        print(f"     Active: {'active (running)' if pid else 'inactive (dead)'}")
        if pid:
            print(f"   Main PID: {pid}")
        print(journal(self.name, 10), end="")
        return 0 if pid else 3


def journal(name: str, lines: int | None) -> str:
    try:
        text = open(os.path.join(STATE, f"{name}.log"), encoding="utf-8", errors="replace").read()
    except OSError:
        return ""
    rows = text.splitlines(keepends=True)
    return "".join(rows[-lines:] if lines else rows)


def systemctl(args: list[str]) -> int:
    words = [a for a in args if not a.startswith("-")]
    flags = {a for a in args if a.startswith("-")}
    if not words:
        raise Fail("usage: systemctl VERB [UNIT...]")
    verb, names = words[0], words[1:]
    if verb == "daemon-reload":
        return 0
    if verb == "is-active":
        alive = all(Unit(n).pid() for n in names)
        print("active" if alive else "inactive")
        return 0 if alive else 3
    if verb == "status":
        return max(Unit(n).status() for n in names)
    for n in names:
        unit = Unit(n)
        if verb == "enable":
            for target in unit.sections.get("Install", {}).get("WantedBy", []):
                wants = os.path.join(UNIT_DIR, f"{target}.wants")
                os.makedirs(wants, exist_ok=True)
                link = os.path.join(wants, unit.name)
                if not os.path.islink(link):
                    os.symlink(unit.path, link)
                    print(f"Created symlink {link} → {unit.path}.", file=sys.stderr)
            if "--now" in flags:
                unit.start()
        elif verb == "start":
            unit.start()
        elif verb == "stop":
            unit.stop()
        elif verb == "restart":
            unit.stop()
            unit.start()
        elif verb == "reload":
            unit.reload()
        else:
            raise Fail(f"fake systemctl: verb {verb!r} is not emulated")
    return 0


def journalctl(args: list[str]) -> int:
    units = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-u"]
    count = next((int(args[i + 1]) for i, a in enumerate(args[:-1]) if a == "-n"), None)
    for name in units:
        print(journal(split_name(name)[0], count), end="")
    return 0


def exec_mdwe(argv: list[str]) -> None:
    """MemoryDenyWriteExecute=: no mapping may become writable and executable, for this process and its
    children, then exec the command."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise Fail(f"prctl(PR_SET_MDWE): {os.strerror(ctypes.get_errno())}")
    os.execvp(argv[0], argv)


def main() -> int:
    prog = os.path.basename(sys.argv[0])
    try:
        if sys.argv[1:2] == ["__exec"]:
            exec_mdwe(sys.argv[2:])
        if prog == "journalctl":
            return journalctl(sys.argv[1:])
        return systemctl(sys.argv[1:])
    except Fail as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
