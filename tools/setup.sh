#!/usr/bin/env bash
# Installs what wgc, its tests, its demo and its benchmarks need on a fresh Debian machine (run as root):
# Debian's packages, then a project virtual environment in .venv (made with the system's `python3 -m venv`,
# ignored by git) holding wgc and its Python dependencies. Nothing is installed into a system or pyenv
# Python. Afterwards `.venv/bin/wgc` is the command; `export PATH="$PWD/.venv/bin:$PATH"` puts it on PATH.
# WGC_PYTHON names another interpreter (3.11 or newer) to build the venv from, WGC_VENV another place for it.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/sbin:/usr/bin:/sbin:/bin"
need=()
for pkg in wireguard-go wireguard-tools iperf3 stun-server stun-client coturn iproute2 tcpdump procps \
           iputils-ping nftables pebble python3 python3-venv python3-dev gcc \
           systemd prometheus curl openssl ca-certificates util-linux; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The system's interpreter, not whatever python3 a user's PATH puts first (pyenv, conda, ...).
py=${WGC_PYTHON:-/usr/bin/python3}
venv=${WGC_VENV:-.venv}
if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating the virtual environment $venv with $py"
    "$py" -m venv "$venv"
fi
# An editable install: the venv's wgc runs this tree's code.
log=$(mktemp)
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "setup: pip install into $venv failed" >&2; exit 1
fi
grep -v "^WARNING: Location .* is ignored" "$log" || true
rm -f "$log"
"$venv/bin/python" -c 'import wgclient, derp, natprobe, pytun, uvloop' \
    || { echo "setup: the virtual environment $venv is incomplete" >&2; exit 1; }
bin=$(cd "$venv/bin" && pwd)
echo "setup: done; wgc is $bin/wgc (export PATH=\"$bin:\$PATH\" to call it as wgc)"
