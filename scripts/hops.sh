#!/usr/bin/env bash
# Where a cross-node ping's time goes, hop by hop: pings from pod1-1 to
# pod2-1 of a two-node lab (`podswitchctl lab up --name LAB --nodes 2`,
# any backend, podswitch or kernel dataplane), with tcpdump on the four
# places each packet passes (the sending pod's eth0, node1's ul0, node2's
# ul0, the receiving pod's eth0) and the time between each pair, request
# and reply, in µs (p50, p90, p99, max):
#   node1 -> ul0     node1's dataplane: pod port in, tunnel out
#   wire             node1's ul0 to node2's ul0 (a veth: the kernel)
#   ul0 -> pod       node2's dataplane: tunnel in, pod port out
#   pod answers      the receiving pod's own stack
# and the same three hops back. Each timestamp is the kernel's, taken as
# the packet passes the capture point. tcpdump adds its own wake-ups, so
# the round trip here is longer than the bench's; the hops' shares are
# what this shows. What a packet socket sends past the qdisc (podswitch's
# host-gw underlay) passes no tcpdump on its way out: such a hop is
# joined to the next one ("node1 -> ul0 + wire").
# With --load, one TCP stream runs between the same pods meanwhile.
# Usage: scripts/hops.sh LAB [--load] [PINGS]   (root; docs/benchmarks.md)
set -euo pipefail
lab=${1:?usage: scripts/hops.sh LAB [--load] [PINGS]}
shift
load=""
if [ "${1:-}" = --load ]; then load=1; shift; fi
pings=${1:-400}
for ns in "lab-$lab-pod1-1" "lab-$lab-pod2-1" "lab-$lab-n1" "lab-$lab-n2"; do
  ip netns pids "$ns" >/dev/null 2>&1 ||
    { echo "hops: no namespace $ns: bring up a two-node lab first (podswitchctl lab up --name $lab --nodes 2)" >&2; exit 1; }
done
dst=$(ip -n "lab-$lab-pod2-1" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
[ -n "$dst" ] || { echo "hops: pod2-1 of lab $lab has no IPv4 address on eth0" >&2; exit 1; }
dir=$(mktemp -d)
dumps=()
cleanup() {
  if [ "${#dumps[@]}" -gt 0 ]; then kill "${dumps[@]}" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
# ICMP; ICMP inside VXLAN or IP-in-UDP (8 bytes of UDP, 8 of VXLAN, 14 of
# Ethernet, then the inner IPv4 header's protocol at offset 9; IP-in-UDP
# has the inner header right after UDP); ICMP inside IPIP.
filter='icmp or (udp and (udp[39] = 1 or udp[17] = 1)) or (ip proto 4 and ip[29] = 1)'
capture() { # NETNS IFACE FILE
  ip netns exec "$1" tcpdump -tt -n -l -i "$2" "$filter" >"$dir/$3" 2>/dev/null &
  dumps+=($!)
}
capture "lab-$lab-pod1-1" eth0 a
capture "lab-$lab-n1" ul0 b
capture "lab-$lab-n2" ul0 c
capture "lab-$lab-pod2-1" eth0 d
sleep 1
stream=""
if [ -n "$load" ]; then
  ip netns exec "lab-$lab-pod2-1" iperf3 -s -D -1 -p 5303
  sleep 0.3
  ip netns exec "lab-$lab-pod1-1" iperf3 -c "$dst" -p 5303 -t $((pings / 150 + 3)) >/dev/null &
  stream=$!
  sleep 0.5
fi
ip netns exec "lab-$lab-pod1-1" ping -c "$pings" -i 0.005 "$dst" >"$dir/ping"
if [ -n "$stream" ]; then wait "$stream"; fi
sleep 0.5
kill "${dumps[@]}" 2>/dev/null || true
wait "${dumps[@]}" 2>/dev/null || true
dumps=()
/usr/bin/python3 - "$dir" <<'EOF'
import re, sys
d = sys.argv[1]

def times(name, kind):
    """The first time each ICMP sequence number of `kind` passed."""
    seen, last = {}, None
    for line in open(f"{d}/{name}"):
        m = re.match(r"([0-9]+\.[0-9]+) ", line)
        if m:  # a VXLAN packet's inner headers follow on the next line
            last = float(m.group(1))
        s = re.search(r"ICMP echo " + kind + r", id \d+, seq (\d+)", line)
        if s and last is not None:
            seen.setdefault(int(s.group(1)), last)
    return seen

a, b, c, dd = ((times(x, "request"), times(x, "reply")) for x in "abcd")
# Where each ping was seen, in the order it passes, and the hop between
# each point and the next.
points = [a[0], b[0], c[0], dd[0], dd[1], c[1], b[1], a[1]]
names = ["node1 -> ul0", "wire", "ul0 -> pod", "pod answers",
         "node2 -> ul0", "wire back", "ul0 -> pod back"]

def row(name, start, end):
    v = sorted((end[s] - start[s]) * 1e6 for s in start if s in end)
    if not v:
        sys.exit(f"hops: no ping seen at both ends of '{name}'")
    q = lambda f: v[min(len(v) - 1, int(len(v) * f))]
    print(f"| {name} | {len(v)} | {q(0.5):.0f} | {q(0.9):.0f} | {q(0.99):.0f} | {v[-1]:.0f} |")

print("| hop | pings | p50 (µs) | p90 (µs) | p99 (µs) | max (µs) |")
print("|---|---|---|---|---|---|")
last = 0
for i in range(1, len(points)):
    if not points[i]:
        continue  # not seen here: the hop runs on to the next point
    row(" + ".join(names[last:i]), points[last], points[i])
    last = i
row("round trip", a[0], a[1])
EOF
tail -1 "$dir/ping"
