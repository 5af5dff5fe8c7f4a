"""Running the image built from deploy/Dockerfile the way a container engine would, inside a sandbox
(tests/deploy/sandbox.py) of its own network namespace: the image's files as the lowest layer, bind-mounted
volumes (read-only where asked), a read-only root, sysctls, the image's USER with no capability, its
WORKDIR, ENV, ENTRYPOINT + command, and its HEALTHCHECK polled until it passes.

What a real engine adds and this does not: cgroup limits (memory), seccomp/AppArmor profiles, port
publishing (the test reaches the ports inside the namespace), the base image's own files (the host's Debian
stands in for python:3.11-slim-bookworm).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from dockerfile import Image
from sandbox import PATH


@dataclass
class Run:
    argv: list[str]                                   # the command after the entrypoint
    env: dict[str, str] = field(default_factory=dict)
    # (source, target, read-only); a source equal to its target is a named volume: the image's directory
    volumes: list[tuple[str, str, bool]] = field(default_factory=list)
    read_only: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)
    tmpfs: list[str] = field(default_factory=list)


def script(image: Image, run: Run, after: str, health_wait: float = 30.0) -> str:
    """Start the container's process in the background, wait for its HEALTHCHECK, then run `after`
    (bash; $PID is the container's main process, `as_user CMD` runs CMD as the image's user)."""
    lines = [f"sysctl -qw {shlex.quote(k)}={shlex.quote(v)}" for k, v in run.sysctls.items()]
    for src, dst, ro in run.volumes:
        s, d = shlex.quote(src), shlex.quote(dst)
        lines.append(f"if [ -d {s} ]; then mkdir -p {d}; else mkdir -p \"$(dirname {d})\"; touch {d}; fi")
        lines.append(f"mount --bind {s} {d}" + (f" && mount -o remount,bind,ro {d}" if ro else ""))
    if run.read_only:
        keep = {dst for _, dst, _ in run.volumes}
        lines.append("for m in $(awk '{print $2}' /proc/self/mounts | sort -u); do case $m in "
                     "/proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/mnt|/mnt/*) ;; " +
                     "".join(f"{shlex.quote(k)}) ;; " for k in sorted(keep)) +
                     "*) mount -o remount,bind,ro \"$m\" 2>/dev/null || true;; esac; done")
    for path in run.tmpfs:
        lines.append(f"mount -t tmpfs -o mode=1777 tmpfs {shlex.quote(path)}")
    env = {"PATH": PATH.replace("/mnt/bin:", ""), "HOSTNAME": "derper"} | image.env | run.env
    env["HOME"] = image.workdir
    env_words = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    user = shlex.quote(image.user)
    lines += [
        f"uid=$(id -u {user}); gid=$(id -g {user})",
        "as_user() { setpriv --reuid=$uid --regid=$gid --clear-groups --inh-caps=-all --bounding-set=-all "
        f"--no-new-privs env -i {env_words} \"$@\"; }}",
        "as_user_exec() { exec setpriv --reuid=$uid --regid=$gid --clear-groups --inh-caps=-all "
        f"--bounding-set=-all --no-new-privs env -i {env_words} \"$@\"; }}",
        f"cd {shlex.quote(image.workdir)}",
        f"(as_user_exec {shlex.join(image.entrypoint + run.argv)}) >/mnt/container.out 2>/mnt/container.err &",
        "PID=$!",
        f"deadline=$((SECONDS + {int(health_wait)}))",
        f"until as_user timeout 5 {shlex.join(image.healthcheck)} 2>/mnt/health.err; do",
        "  if ! kill -0 $PID 2>/dev/null || [ $SECONDS -ge $deadline ]; then",
        "    echo UNHEALTHY; cat /mnt/health.err /mnt/container.out /mnt/container.err; exit 1; fi",
        "  sleep 0.5",
        "done",
        "echo HEALTHY",
        after,
        "kill -TERM $PID; wait $PID || true",
    ]
    return "\n".join(lines) + "\n"
