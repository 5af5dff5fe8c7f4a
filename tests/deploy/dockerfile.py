"""Enough of a Dockerfile reader for the deployment tests: the instructions of deploy/Dockerfile turned into
one bash build script (ARG defaults, ENV, COPY from the build context with --chmod, RUN without its --mount
options, WORKDIR) to run in a sandbox (tests/deploy/sandbox.py), and the run-time settings (USER, WORKDIR,
ENTRYPOINT, CMD, HEALTHCHECK, ENV, EXPOSE) to start the result with.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field


@dataclass
class Image:
    build_script: str = ""
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    expose: list[str] = field(default_factory=list)
    base: str = ""


def instructions(text: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), text)


def _exec_form(rest: str) -> list[str]:
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def _options(words: list[str]) -> tuple[dict[str, str], list[str]]:
    opts = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        opts[key] = value
    return opts, words


def parse(text: str, context: str) -> Image:
    """`context`: where the build context (the repository root) is in the sandbox."""
    image = Image()
    env: dict[str, str] = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    runtime = dict(env)   # ENV only: ARG values are not in the container's environment
    script = ["set -euo pipefail", "cd /"]
    for word, rest in instructions(text):
        if word == "FROM":
            image.base = rest
        elif word in ("ARG", "ENV"):
            pairs = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', rest)
            for key, value in pairs:
                env[key] = _expand(value.strip('"'), env)
                script.append(f"export {key}={shlex.quote(env[key])}")
                if word == "ENV":
                    runtime[key] = env[key]
        elif word == "COPY":
            opts, words = _options(shlex.split(rest))
            *sources, dest = [_expand(w, env) for w in words]
            script.append(f"mkdir -p {shlex.quote(dest if dest.endswith('/') else dest.rsplit('/', 1)[0] or '/')}")
            for src in sources:
                target = dest + src.rstrip("/").rsplit("/", 1)[-1] if dest.endswith("/") else dest
                script.append(f"cp -a {shlex.quote(context + '/' + src)} {shlex.quote(target)}")
                if "chmod" in opts:
                    script.append(f"chmod {opts['chmod']} {shlex.quote(target)}")
        elif word == "RUN":
            command = re.sub(r"^(--\S+\s+)+", "", rest)
            script.append(command)
        elif word == "WORKDIR":
            image.workdir = _expand(rest, env)
            script.append(f"mkdir -p {shlex.quote(image.workdir)} && cd {shlex.quote(image.workdir)}")
        elif word == "USER":
            image.user = _expand(rest, env)
        elif word == "ENTRYPOINT":
            image.entrypoint = _exec_form(rest)
        elif word == "CMD":
            image.cmd = _exec_form(rest)
        elif word == "HEALTHCHECK":
            opts, words = _options(shlex.split(rest, posix=False))
            image.healthcheck_options = opts
            image.healthcheck = _exec_form(" ".join(words).removeprefix("CMD").strip())
        elif word == "EXPOSE":
            image.expose = rest.split()
        elif word not in ("VOLUME", "STOPSIGNAL", "LABEL"):
            raise ValueError(f"Dockerfile instruction {word} is not understood by tests/deploy/dockerfile.py")
    image.env = runtime
    image.build_script = "\n".join(script) + "\n"
    return image
