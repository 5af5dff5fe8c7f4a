#!/usr/bin/env bash
# The wgc demo: relayed at once, direct as soon as hole punching works.
#
# In the NAT lab (network namespaces: an "internet", one relay region with +20 ms round trip, two
# clients behind cone NATs) it starts `wgc derper` (DERP over TLS and QUIC + STUN), brings up two wgc peers with
# `--derpmap` and no Endpoint, and shows: `wgc status` (relayed over DERP: at first client 2's router
# drops UDP between the two sites, as a strict firewall does), a ping through the relayed tunnel, then
# UDP is allowed and `wgc ping --until-direct` goes from `via DERP(lab)` to `via <ip:port>`, `wgc
# status` (direct), and a file through the tunnel with sha256 on both ends. Everything is torn down at
# the end, also on failure or Ctrl-C.
#
#   bash tools/demo.sh [--size MIB] [--skip-setup]
#
# All traffic stays inside the lab's namespaces (198.18.0.0/15 outside, 100.90.0.0/24 in the tunnel).
# tools/demo_veth.sh is the plain two-peer demo (wgc or wireguard-go on a veth, no relay).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/tools/demo_common.sh"

SIZE_MIB=20
SETUP=1
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE_MIB=${2:-}; shift 2 ;;
        --skip-setup) SETUP=0; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
case "$SIZE_MIB" in ''|*[!0-9]*) echo "demo.sh: --size takes a whole number of MiB" >&2; exit 2 ;; esac
if [ "$(id -u)" != 0 ]; then echo "demo.sh: needs root (network namespaces and TUN devices)" >&2; exit 1; fi

demo_setup "$SETUP"

TAG=$(( $$ % 100000 ))
LAB=wgcdemo$TAG
NS_R=natlab-$LAB-region1 NS_A=natlab-$LAB-client1 NS_B=natlab-$LAB-client2
IF_A=alice$TAG IF_B=bob$TAG            # interface names = config file stems (<= 15 characters)
TMP=$(mktemp -d /tmp/wgc-demo.XXXXXX)
chmod 700 "$TMP"
export WGC_STATE_DIR="$TMP/state"       # the peers' cached DERP maps go with the demo's temp dir
STATE=${NATLAB_STATE_DIR:-/run/natlab}/$LAB.json
DERPER=

lab_py() {  # run a tools.natlab.lab method on this demo's lab: lab_py 'cut_udp(2)'
    "$PY" -c "import json; from tools.natlab.lab import NatLab; lab = NatLab.attach(json.load(open('$STATE'))); lab.$1"
}

cleanup() {
    local rc=$?
    set +e
    trap '' PIPE INT TERM   # finish cleaning up even if our output pipe is gone or Ctrl-C is pressed again
    step "cleanup"
    for pair in "$NS_A:$IF_A" "$NS_B:$IF_B"; do
        ns=${pair%%:*} ifname=${pair##*:}
        [ -e "/var/run/wireguard/$ifname.sock" ] || continue
        show "wgc down $ifname"
        ip netns exec "$ns" "${WGC[@]}" down "$ifname"
    done
    if [ -n "$DERPER" ]; then kill "$DERPER" 2>/dev/null; wait "$DERPER" 2>/dev/null; fi
    if [ -e "$STATE" ]; then
        show "python3 -m tools.natlab down $LAB"
        "$PY" -m tools.natlab down "$LAB"
    fi
    rm -f "/var/run/wireguard/$IF_A.sock" "/var/run/wireguard/$IF_B.sock"
    rm -rf "$TMP"
    if [ $rc = 0 ]; then
        rm -f "/var/log/wgc/$IF_A.log" "/var/log/wgc/$IF_B.log"
        echo "demo finished: lab, relay, interfaces and temp files removed"
    else
        echo "demo FAILED (exit $rc); everything it made was removed (wgc logs: /var/log/wgc/$IF_A.log, $IF_B.log)" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "the NAT lab: one relay region (+20 ms round trip), two clients behind cone NATs"
show "python3 -m tools.natlab up --name $LAB --region 20 --client cone --client cone"
"$PY" -m tools.natlab up --name "$LAB" --region 20 --client cone --client cone
# The lab routes the clients' IPv6 without NAT, which would make the path direct at once: IPv4 only here.
for ns in "$NS_A" "$NS_B"; do
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done

step "a relay in region 1: wgc derper (TLS, self-signed) with STUN on 3478"
show "ip netns exec $NS_R wgc derper -a :443 --hostname 198.18.1.2 --certmode selfsigned --open-relay --stun"
ip netns exec "$NS_R" "$PY" -m derp -a :443 --hostname 198.18.1.2 --certmode selfsigned --certdir "$TMP/certs" \
    --open-relay --stun --stun-port 3478 --http-port -1 --metrics-addr off --shutdown-timeout 1 \
    > "$TMP/derper.out" 2> "$TMP/derper.log" &
DERPER=$!
for _ in $(seq 100); do grep -q "derper ready" "$TMP/derper.out" 2>/dev/null && break; sleep 0.1; done
grep -q "derper ready" "$TMP/derper.out" || { echo "wgc derper did not start:" >&2; cat "$TMP/derper.log" >&2; exit 1; }
"$PY" -m tools.natlab derpmap "$LAB" | "$PY" -c '
import json, sys
dm = json.load(sys.stdin)
for region in dm["Regions"].values():
    region["RegionCode"] = "lab"
    for node in region["Nodes"]:
        node["IPv6"] = "none"
        node["WgcQUICPort"] = 443   # the relay also speaks DERP over QUIC there (docs/derp-quic.md)
json.dump(dm, sys.stdout, indent=1)' > "$TMP/derpmap.json"
echo "DERP map ($TMP/derpmap.json): region 901 \"lab\", node 198.18.1.2:443 (InsecureForTests: self-signed;"
echo "  WgcQUICPort 443: wgc clients relay over QUIC datagrams while UDP to the relay works, else over TLS)"

step "keys and configs: no Endpoint, the peers find each other through the relay"
(umask 077; "${WGC[@]}" genkey > "$TMP/a.key"; "${WGC[@]}" genkey > "$TMP/b.key")
PUB_A=$("${WGC[@]}" pubkey < "$TMP/a.key")
PUB_B=$("${WGC[@]}" pubkey < "$TMP/b.key")
write_conf() {  # file own-key address peer-name peer-pub peer-inner
    (umask 077; cat > "$1" <<EOF
[Interface]
PrivateKey = $(cat "$2")
Address = $3
ListenPort = 41641

[Peer]
# Name = $4
PublicKey = $5
AllowedIPs = $6
DerpRegion = lab
EOF
    )
}
write_conf "$TMP/$IF_A.conf" "$TMP/a.key" 100.90.0.1/32 bob "$PUB_B" 100.90.0.2/32
write_conf "$TMP/$IF_B.conf" "$TMP/b.key" 100.90.0.2/32 alice "$PUB_A" 100.90.0.1/32
echo "$IF_A.conf (private key hidden):"
sed 's/^PrivateKey = .*/PrivateKey = (hidden)/' "$TMP/$IF_A.conf"

step "for now, client 2's router drops UDP to and from client 1's network: only the relay can work"
show "python3 -c 'lab.cut_udp(2, only_net=\"198.19.1.0/24\")'   # nftables on the router"
lab_py 'cut_udp(2, only_net="198.19.1.0/24")'

step "bring both peers up (wgc up --derpmap)"
show "ip netns exec $NS_A wgc up $IF_A.conf --derpmap derpmap.json"
ip netns exec "$NS_A" "${WGC[@]}" up "$TMP/$IF_A.conf" --derpmap "$TMP/derpmap.json"
show "ip netns exec $NS_B wgc up $IF_B.conf --derpmap derpmap.json"
ip netns exec "$NS_B" "${WGC[@]}" up "$TMP/$IF_B.conf" --derpmap "$TMP/derpmap.json"
for _ in $(seq 50); do  # both on their home relay before the first packet
    ip netns exec "$NS_A" "${WGC[@]}" status "$IF_A" --json 2>/dev/null | grep -q '"connected": true' &&
        ip netns exec "$NS_B" "${WGC[@]}" status "$IF_B" --json 2>/dev/null | grep -q '"connected": true' && break
    sleep 0.1
done

step "ping through the tunnel: alice (100.90.0.1) -> bob (100.90.0.2), relayed"
show "ip netns exec $NS_A ping -c 3 100.90.0.2"
ip netns exec "$NS_A" ping -n -c 3 -i 0.3 -w 10 100.90.0.2

step "wgc status on alice: bob is relayed"
show "wgc status $IF_A"
ip netns exec "$NS_A" "${WGC[@]}" status "$IF_A"
show "wgc status $IF_A --why bob"
ip netns exec "$NS_A" "${WGC[@]}" status "$IF_A" --why bob

step "the router lets UDP through again; wgc keeps trying (every ~5 s) and goes direct"
show "python3 -c 'lab.restore_udp(2)'"
lab_py "restore_udp(2)"
show "wgc ping bob -i $IF_A --until-direct -c 30 --interval 0.5"
ip netns exec "$NS_A" "${WGC[@]}" ping bob -i "$IF_A" --until-direct -c 30 --interval 0.5

step "wgc status on alice: bob is direct"
show "wgc status $IF_A"
ip netns exec "$NS_A" "${WGC[@]}" status "$IF_A"

step "transfer a $SIZE_MIB MiB file through the tunnel: alice -> bob"
transfer_file "$NS_A" "$NS_B" 100.90.0.2 "alice" "bob"
