#!/usr/bin/env bash
# The plain-tunnel demo (tools/demo.sh is the relay -> direct one): two WireGuard peers in network
# namespaces joined by a veth: keys from `wgc genkey`/`wgc pubkey`,
# wg-quick style configs in a temp dir, `wgc up` in each namespace, a ping and a file transfer through the
# tunnel (sha256 shown on both ends), `wg show`, then `wgc down` and cleanup (also on failure or Ctrl-C).
#
#   bash tools/demo_veth.sh [--dut wgc|wireguard-go] [--size MIB] [--skip-setup]
#
# --dut wireguard-go runs the same demo with Debian's wireguard-go + `wg` in place of wgc.
# All traffic stays inside the two namespaces the demo makes (192.0.2.0/24 outside, 10.77.0.0/24 inside).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/tools/demo_common.sh"

DUT=wgc
SIZE_MIB=20
SETUP=1
while [ $# -gt 0 ]; do
    case "$1" in
        --dut) DUT=${2:-}; shift 2 ;;
        --dut=*) DUT=${1#--dut=}; shift ;;
        --size) SIZE_MIB=${2:-}; shift 2 ;;
        --skip-setup) SETUP=0; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo_veth.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
case "$DUT" in wgc|wireguard-go) ;; *) echo "demo_veth.sh: --dut must be wgc or wireguard-go" >&2; exit 2 ;; esac
case "$SIZE_MIB" in ''|*[!0-9]*) echo "demo_veth.sh: --size takes a whole number of MiB" >&2; exit 2 ;; esac
if [ "$(id -u)" != 0 ]; then echo "demo_veth.sh: needs root (network namespaces and TUN devices)" >&2; exit 1; fi

demo_setup "$SETUP"

TAG=$(( $$ % 100000 ))
NS_A=wgcdemo-a-$TAG NS_B=wgcdemo-b-$TAG
IF_A=wgda$TAG IF_B=wgdb$TAG           # interface names = config file stems (<= 15 characters)
TMP=$(mktemp -d /tmp/wgc-demo.XXXXXX)
chmod 700 "$TMP"

cleanup() {
    local rc=$?
    set +e
    trap '' PIPE INT TERM   # finish cleaning up even if our output pipe is gone or Ctrl-C is pressed again
    step "cleanup"
    for pair in "$NS_A:$IF_A" "$NS_B:$IF_B"; do
        ns=${pair%%:*} ifname=${pair##*:}
        [ -e "/var/run/wireguard/$ifname.sock" ] || continue
        if [ "$DUT" = wgc ]; then
            echo "\$ wgc down $ifname"
            ip netns exec "$ns" "${WGC[@]}" down "$ifname"
        else
            echo "\$ ip link del $ifname   # wireguard-go exits with its interface"
            ip netns exec "$ns" ip link del "$ifname"
        fi
    done
    for ns in "$NS_A" "$NS_B"; do
        if ip netns list | grep -qw "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
            ip netns del "$ns"
        fi
    done
    rm -f "/var/run/wireguard/$IF_A.sock" "/var/run/wireguard/$IF_B.sock"
    rm -rf "$TMP"
    if [ $rc = 0 ]; then
        rm -f "/var/log/wgc/$IF_A.log" "/var/log/wgc/$IF_B.log"
        echo "demo finished: namespaces, interfaces and temp files removed"
    else
        echo "demo FAILED (exit $rc); everything it made was removed (wgc logs: /var/log/wgc/$IF_A.log, $IF_B.log)" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "two network namespaces joined by a veth pair (192.0.2.1 <-> 192.0.2.2)"
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add veth-$TAG-a netns "$NS_A" type veth peer name veth-$TAG-b netns "$NS_B"
ip -n "$NS_A" addr add 192.0.2.1/24 dev veth-$TAG-a
ip -n "$NS_B" addr add 192.0.2.2/24 dev veth-$TAG-b
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set veth-$TAG-a up
ip -n "$NS_B" link set veth-$TAG-b up
echo "namespaces: $NS_A, $NS_B"

step "keys"
if [ "$DUT" = wgc ]; then GENKEY=("${WGC[@]}" genkey) PUBKEY=("${WGC[@]}" pubkey); label=wgc
else GENKEY=(wg genkey) PUBKEY=(wg pubkey); label=wg; fi
(umask 077; "${GENKEY[@]}" > "$TMP/a.key"; "${GENKEY[@]}" > "$TMP/b.key")
PUB_A=$("${PUBKEY[@]}" < "$TMP/a.key")
PUB_B=$("${PUBKEY[@]}" < "$TMP/b.key")
echo "\$ $label genkey | tee a.key | $label pubkey   ->  $PUB_A"
echo "\$ $label genkey | tee b.key | $label pubkey   ->  $PUB_B"

write_conf() {  # file own-key address port peer-pub peer-inner peer-endpoint
    (umask 077; cat > "$1" <<EOF
[Interface]
PrivateKey = $(cat "$2")
Address = $3
ListenPort = $4

[Peer]
PublicKey = $5
AllowedIPs = $6
Endpoint = $7
PersistentKeepalive = 25
EOF
    )
}
write_conf "$TMP/$IF_A.conf" "$TMP/a.key" 10.77.0.1/24 51820 "$PUB_B" 10.77.0.2/32 192.0.2.2:51820
write_conf "$TMP/$IF_B.conf" "$TMP/b.key" 10.77.0.2/24 51820 "$PUB_A" 10.77.0.1/32 192.0.2.1:51820
step "config for $IF_A (in $TMP; private key hidden here)"
sed 's/^PrivateKey = .*/PrivateKey = (hidden)/' "$TMP/$IF_A.conf"

up() {  # namespace ifname
    local conf="$TMP/$2.conf"
    if [ "$DUT" = wgc ]; then
        echo "\$ ip netns exec $1 wgc up $conf"
        ip netns exec "$1" "${WGC[@]}" up "$conf"
    else
        echo "\$ ip netns exec $1 wireguard-go $2 && wg setconf $2 (config without Address) && ip addr/link"
        ip netns exec "$1" wireguard-go "$2" 2>/dev/null
        grep -v '^Address' "$conf" > "$TMP/$2.wg"
        ip netns exec "$1" wg setconf "$2" "$TMP/$2.wg"
        ip -n "$1" addr add "$(sed -n 's/^Address = //p' "$conf")" dev "$2"
        ip -n "$1" link set "$2" mtu 1420 up
    fi
}
step "bring the tunnel up ($DUT)"
up "$NS_A" "$IF_A"
up "$NS_B" "$IF_B"

step "ping through the tunnel: $NS_A (10.77.0.1) -> $NS_B (10.77.0.2)"
ip netns exec "$NS_A" ping -n -c 3 -i 0.3 -w 10 10.77.0.2

step "transfer a $SIZE_MIB MiB file through the tunnel: $NS_A -> $NS_B"
transfer_file "$NS_A" "$NS_B" 10.77.0.2 "$NS_A" "$NS_B"

step "wg show (stock wireguard-tools against the UAPI sockets)"
ip netns exec "$NS_A" wg show "$IF_A"
echo
ip netns exec "$NS_B" wg show "$IF_B"
