#!/usr/bin/env bash
# The demo on built-in defaults (as root): a two-node VXLAN cluster on
# podswitch in network namespaces; a pod on node1 pings a pod on node2; the
# path of that ping hop by hop as podswitch sees it on both nodes (pod
# port, FDB/FIB lookups, encapsulation with the outer headers, underlay,
# decapsulation, delivery); a TCP transfer and the counters that show its
# super-frames' path; one encapsulated frame captured on node2's
# underlay, explained byte by byte; then the lab is torn down. After it,
# the same packet under flannel VXLAN, Calico IPIP and flannel UDP built
# in-process, and a frame from the kernel's own vxlan device explained.
# Nothing leaves this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

say "building podswitch (release)"
cargo build --release --locked --quiet --bins --example encap_walkthrough --example pipeline_walkthrough
ctl=target/release/podswitchctl

say "starting a two-node vxlan lab on podswitch: podswitchd per node, pods attached through the CNI plugin"
trap '$ctl lab down --name demo' EXIT
$ctl lab up --name demo --nodes 2 --pods-per-node 1 --backend vxlan --dataplane podswitch
status=$($ctl lab status --name demo --json)
field() { /usr/bin/python3 -c "import json,sys; v=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$status" "$1"; }
dst=$(field 'next(p["ip"] for p in v["pods"] if p["node"]=="node2")')
src=$(field 'next(p["ip"] for p in v["pods"] if p["node"]=="node1")')
sock1=$(field 'v["nodes"][0]["socket"]'); sock2=$(field 'v["nodes"][1]["socket"]')

say "pod1-1 ($src) on node1 pings pod2-1 ($dst) on node2"
$ctl lab exec --name demo pod1-1 -- ping -c 3 -i 0.2 "$dst"

port=$($ctl --socket "$sock1" --json port list | /usr/bin/python3 -c "import json,sys; print(next(p['interface'] for p in json.load(sys.stdin) if p['ip']=='$src'))")
say "node1: what podswitch does with that ping, from pod1-1's port ($port) to the underlay"
$ctl --socket "$sock1" trace --in-port "$port" --dst-ip "$dst"
encapsulated=$($ctl --socket "$sock1" --json trace --in-port "$port" --dst-ip "$dst" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['outputs'][0]['hex'])")
say "node2: the same frame as it arrives on the underlay, decapsulated and delivered"
$ctl --socket "$sock2" trace --in-port ul0 --hex "$encapsulated"

say "pod1-1 sends 20 MB of TCP to pod2-1: the path of a super-frame, next to the ping's"
echo "(a pod's TCP leaves its eth0 as 64 KiB TSO super-frames; podswitch carries each as one"
echo " packet: whole from the pod's port, in one or two UDP_SEGMENT bursts on node1's underlay,"
echo " each burst merged again on node2 and handed to pod2-1 whole. The counters below show"
echo " which path it took.)"
$ctl lab exec --name demo pod2-1 -- iperf3 -s -1 -D >/dev/null
sleep 0.5
$ctl lab exec --name demo pod1-1 -- iperf3 -c "$dst" -n 20M | grep -E 'sender|receiver' || true
echo "node1:"
$ctl --socket "$sock1" stats | sed -n '/SUPER-FRAMES/,/^$/p'
echo "node2:"
$ctl --socket "$sock2" stats | sed -n '/SUPER-FRAMES/,/^$/p'
say "node1: podswitchctl top --once while pod1-1 pings pod2-1 every 10 ms (rates over one second)"
( $ctl lab exec --name demo pod1-1 -- ping -q -c 150 -i 0.01 "$dst" >/dev/null ) &
$ctl --socket "$sock1" top --once
wait
say "node1: one such super-frame (20,000 bytes of TCP, segment size 1398), traced"
$ctl --socket "$sock1" trace --in-port "$port" --dst-ip "$dst" --protocol tcp --payload-len 20000 --gso-size 1398

say "capturing one encapsulated frame on node2's underlay while pod1-1 pings again"
capture=$(mktemp /tmp/podswitch-demo-XXXX.pcap)
( sleep 0.5; $ctl lab exec --name demo pod1-1 -- ping -c 2 -i 0.2 "$dst" >/dev/null ) &
$ctl --socket "$sock2" capture ul0 -w "$capture" -c 1 --seconds 10
wait
say "podswitchctl explain: that frame, outer Ethernet to inner ICMP"
echo "(podswitch receives VXLAN through a UDP socket, which hands over the payload: the outer"
echo " headers below are rebuilt from what the kernel reports - addresses, ports, TOS, TTL;"
echo " the sender's MAC and IP identification are not reported, so they show as zero)"
$ctl explain "$capture"
rm -f "$capture"
$ctl lab down --name demo
trap - EXIT

say "in-process walkthrough: pod 10.244.2.2 on node02 pings pod 10.244.1.2 on node01, three encapsulations"
pcap=target/walkthrough.pcap
target/release/examples/encap_walkthrough "$pcap"

say "the engine, hop by hop: node1 encapsulates the ping, node2 delivers it (traced, in-process)"
target/release/examples/pipeline_walkthrough

say "podswitchctl explain: a frame captured from the Linux kernel's vxlan device (tests/fixtures)"
target/release/podswitchctl explain --frame 2 tests/fixtures/kernel_vxlan_csum.pcap

say "podswitchctl explain: the same frame with its VXLAN I flag cleared and one payload bit flipped"
frame=$(
  /usr/bin/python3 - <<'PY'
import struct
data = open("tests/fixtures/kernel_vxlan_csum.pcap", "rb").read()
off = 24
for i in range(2):
    incl = struct.unpack("<I", data[off + 8:off + 12])[0]
    frame = bytearray(data[off + 16:off + 16 + incl])
    off += 16 + incl
frame[42] = 0x00      # VXLAN flags: I flag cleared
frame[-1] ^= 0x01     # a payload bit: the outer UDP checksum no longer verifies
print(frame.hex())
PY
)
target/release/podswitchctl explain --hex "$frame" || echo "(podswitchctl exits 1 for a malformed frame)"

say "done: $pcap holds the three walkthrough frames; open it in Wireshark or run"
echo "   target/release/podswitchctl explain $pcap"
