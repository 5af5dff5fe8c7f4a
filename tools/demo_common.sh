# Sourced by tools/demo.sh and tools/demo_veth.sh (after ROOT is set): output helpers, setup, `wgc` from
# this tree, and a sha256-checked file transfer through the tunnel.

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; }

# demo_setup 0|1: run tools/setup.sh when 1; then PY (the project venv's Python, .venv/bin/python) and WGC
# (`wgc` from this tree, whatever console script may be installed elsewhere) for the demo; WGC_DEMO_PYTHON
# overrides the interpreter (the tests pass their own).
demo_setup() {
    if [ "$1" = 1 ]; then
        step "setup (tools/setup.sh)"
        bash "$ROOT/tools/setup.sh"
    fi
    PY="${WGC_DEMO_PYTHON:-$ROOT/.venv/bin/python}"
    [ -x "$PY" ] || { echo "no virtual environment in $ROOT/.venv: run bash tools/setup.sh first" >&2; exit 1; }
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    WGC=("$PY" -c 'import sys; from wgclient.cli.main import main; sys.exit(main(sys.argv[1:]))')
}

# transfer_file SEND_NS RECV_NS RECV_IP SEND_LABEL RECV_LABEL  (uses $PY, $TMP, $SIZE_MIB; exits 1 on mismatch)
transfer_file() {
    local send_ns=$1 recv_ns=$2 ip=$3 send_label=$4 recv_label=$5 recv start rate sent got
    head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$TMP/payload.bin"
    ip netns exec "$recv_ns" "$PY" -c '
import socket, sys
s = socket.create_server((sys.argv[2], 9000)); print("ready", flush=True)
c, _ = s.accept()
with open(sys.argv[1], "wb") as f:
    while (chunk := c.recv(1 << 16)):
        f.write(chunk)
' "$TMP/received.bin" "$ip" > "$TMP/recv.out" &
    recv=$!
    for _ in $(seq 50); do grep -q ready "$TMP/recv.out" 2>/dev/null && break; sleep 0.1; done
    start=$EPOCHREALTIME
    ip netns exec "$send_ns" "$PY" -c '
import socket, sys
with socket.create_connection((sys.argv[2], 9000), timeout=30) as s, open(sys.argv[1], "rb") as f:
    s.sendfile(f)
' "$TMP/payload.bin" "$ip"
    wait "$recv"
    rate=$(awk -v s="$start" -v e="$EPOCHREALTIME" -v m="$SIZE_MIB" \
        'BEGIN { printf "%.2f s, %.0f Mbit/s", e - s, m * 8 * 1.048576 / (e - s) }')
    sent=$(sha256sum < "$TMP/payload.bin" | cut -d' ' -f1)
    got=$(sha256sum < "$TMP/received.bin" | cut -d' ' -f1)
    echo "sender   ($send_label) sha256 $sent"
    echo "receiver ($recv_label) sha256 $got"
    [ "$sent" = "$got" ] || { echo "sha256 MISMATCH" >&2; exit 1; }
    echo "identical: $SIZE_MIB MiB in $rate"
}
