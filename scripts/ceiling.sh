#!/usr/bin/env bash
# How close podswitch's AF_PACKET pod ports come to the best any AF_PACKET
# switch can do, on the same two pod veths in one run:
#   podswitch  - the lab's podswitchd switching pod1-1 <-> pod1-2;
#   ceiling    - examples/af_packet_ceiling.rs between the two host ends
#                (receive a batch, send it whole, nothing else), sleeping
#                in poll(2) when idle, then never sleeping (--spin);
#   bridge     - a Linux bridge between them: the kernel path.
# Per round: TCP 1 and 4 streams (iperf3), ping p50/p99 (500 pings, 2 ms
# apart), and the same pings while one TCP stream runs (loaded). The
# four paths take turns in every round: the lab's podswitchd is started
# for its turn (with the command line the lab gave it; its ports come
# back from its state file) and stopped after it, to leave the veths to
# the others.
# With PODS_CPU=0 SWITCH_CPU=1 the pods' iperf3 and ping run on CPU 0 and
# the cross-connect on CPU 1: a switch with a core of its own against the
# kernel path on the pods' core (podswitch's rows are left out when
# either is set).
# With CHAIN=1 the second pod's veth moves to a second switch namespace,
# joined to the first by a veth "wire": two cross-connects in a chain
# (four AF_PACKET hops, as a cross-node frame crosses two nodes) against
# two bridges in a chain (podswitch's rows are left out).
# PATHS picks the rows, in order (default "podswitch ceiling spinning
# bridge"); more: "realtime" (the cross-connect's thread in SCHED_FIFO,
# as podswitchd's worker), "per-cpu" (one SCHED_FIFO thread per CPU,
# pinned, each reading its CPU's frames through a fanout group steered
# by flow: woken on the CPU the frame arrived on, a flow kept in order),
# "per-cpu-normal" (the same in SCHED_OTHER) and "by-cpu-normal" (a plain
# PACKET_FANOUT_CPU split, which reorders). GAP_US (default podswitch's,
# 2000) is how long a flow must be quiet before the per-CPU paths move it
# to another thread.
# The last two columns count, over both TCP runs, the segments the
# server's TCP queued out of order (TcpExtTCPOFOQueue) and those the
# client sent again (TcpRetransSegs): a switch that reorders shows there.
# Usage: scripts/ceiling.sh [ROUNDS] [SECONDS]   (root; docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
seconds=${2:-5}
gap=${GAP_US:-2000}
lab=ceil
ns=lab-$lab-n1
cargo build --release --locked --bin podswitchctl --bin podswitchd --bin podswitch --example af_packet_ceiling >/dev/null 2>&1 ||
  { echo "ceiling: the release build failed (cargo build --release)" >&2; exit 1; }
ctl=target/release/podswitchctl
ceiling=target/release/examples/af_packet_ceiling
forwarder=""
daemon=""
pods=()
switch=()
if [ -n "${PODS_CPU:-}" ]; then pods=(taskset -c "$PODS_CPU"); fi
if [ -n "${SWITCH_CPU:-}" ]; then switch=(taskset -c "$SWITCH_CPU"); fi
cleanup() {
  if [ -n "$forwarder" ]; then kill $forwarder 2>/dev/null || true; fi
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; fi
  ip netns del "lab-$lab-sw2" 2>/dev/null || true
  "$ctl" lab down --name "$lab" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$ctl" lab up --name "$lab" --nodes 1 --pods-per-node 2 >/dev/null
server=lab-$lab-pod1-2
client=lab-$lab-pod1-1
server_ip=10.244.1.3
lab_daemon=$(pgrep -f "podswitchd.*/run/podswitch-lab/$lab/node1") ||
  { echo "ceiling: the lab's podswitchd is not running" >&2; exit 1; }
mapfile -d '' -t daemon_args < "/proc/$lab_daemon/cmdline"
kill "$lab_daemon"
while kill -0 "$lab_daemon" 2>/dev/null; do sleep 0.1; done
mapfile -t veths < <(ip -n "$ns" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -v '^ul0$')
[ "${#veths[@]}" -eq 2 ] || { echo "ceiling: expected 2 pod veths in $ns, found: ${veths[*]}" >&2; exit 1; }
# Where each cross-connect (or bridge) runs, and the two interfaces it joins.
sides=("$ns ${veths[0]} ${veths[1]}")
big_tcp() { # NETNS IFACE: IPv4 GSO and GRO sizes of 196,608 bytes (Debian 12's ip cannot set them)
  ip netns exec "$1" /usr/bin/python3 -c '
import os, socket, struct, sys
index = socket.if_nametoindex(sys.argv[1])
attrs = b"".join(struct.pack("HHI", 8, kind, 196608) for kind in (63, 64))  # IFLA_{GSO,GRO}_IPV4_MAX_SIZE
body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + attrs
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.send(struct.pack("IHHII", 16 + len(body), 16, 0x1 | 0x4, 1, 0) + body)  # RTM_NEWLINK, request, ack
error = struct.unpack_from("i", s.recv(4096), 16)[0]
if error: sys.exit("ceiling: BIG TCP sizes on %s: %s" % (sys.argv[1], os.strerror(-error)))
' "$2"
}
if [ -n "${CHAIN:-}" ]; then
  ns2=lab-$lab-sw2
  ip netns add "$ns2"
  ip -n "$ns" link set "${veths[1]}" netns "$ns2"
  ip -n "$ns" link add ceil-w1 type veth peer name ceil-w2 netns "$ns2"
  ip -n "$ns2" link set "${veths[1]}" up
  # The wire carries the pods' BIG TCP super-frames whole, as the pod
  # veths do (the CNI plugin's POD_GSO_IPV4_MAX_SIZE): otherwise each
  # 192 KiB frame sent into it is cut in software, or dropped.
  big_tcp "$ns" ceil-w1
  big_tcp "$ns2" ceil-w2
  ip -n "$ns" link set ceil-w1 up
  ip -n "$ns2" link set ceil-w2 up
  ip -n "$ns2" link add ceil-br type bridge
  ip -n "$ns2" link set ceil-br up
  sides=("$ns ${veths[0]} ceil-w1" "$ns2 ceil-w2 ${veths[1]}")
fi

tcp() { # STREAMS -> Gbit/s
  ip netns exec "$server" "${pods[@]}" iperf3 -s -D -1 -p 5301
  sleep 0.3
  ip netns exec "$client" "${pods[@]}" iperf3 -c "$server_ip" -p 5301 -t "$seconds" -P "$1" -f g |
    grep receiver | tail -1 | awk '{print $(NF-2)}'
}
latency() { # -> "p50 p99" in microseconds
  ip netns exec "$client" "${pods[@]}" ping -c 500 -i 0.002 "$server_ip" |
    sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n |
    awk '{v[NR]=$1}
      END {
        if (NR == 0) { print "ceiling: no ping came back" > "/dev/stderr"; exit 1 }
        if (NR < 500) print "ceiling: " 500 - NR " of 500 pings lost (p99 of those answered)" > "/dev/stderr"
        printf "%d %d", v[int(NR*0.5)]*1000, v[int(NR*0.99)]*1000
      }'
}
loaded_latency() { # -> "p50 p99" in microseconds, under one TCP stream
  ip netns exec "$server" "${pods[@]}" iperf3 -s -D -1 -p 5302
  sleep 0.3
  ip netns exec "$client" "${pods[@]}" iperf3 -c "$server_ip" -p 5302 -t 3 >/dev/null &
  local load=$!
  sleep 0.5
  latency
  wait "$load"
}
counter() { # NETNS NAME -> its absolute value (nstat, history left alone)
  ip netns exec "$1" nstat -as "$2" | awk -v n="$2" '$1 == n {v = $2} END {print v + 0}'
}
measure() { # LABEL
  ip netns exec "$client" ping -c 3 -i 0.2 -q "$server_ip" >/dev/null
  # Each figure in a variable of its own: a failed measurement stops
  # the script instead of leaving an empty cell.
  local one four idle loaded ofo retrans
  ofo=$(counter "$server" TcpExtTCPOFOQueue)
  retrans=$(counter "$client" TcpRetransSegs)
  one=$(tcp 1)
  four=$(tcp 4)
  ofo=$(( $(counter "$server" TcpExtTCPOFOQueue) - ofo ))
  retrans=$(( $(counter "$client" TcpRetransSegs) - retrans ))
  idle=$(latency)
  loaded=$(loaded_latency)
  [ -n "$one" ] && [ -n "$four" ] || { echo "ceiling: no iperf3 figure for $1" >&2; exit 1; }
  # A path that died during its turn measured nothing.
  local pid
  for pid in $forwarder $daemon; do
    kill -0 "$pid" 2>/dev/null || { echo "ceiling: $1 exited during its turn" >&2; exit 1; }
  done
  echo "| $1 | $one | $four | ${idle/ / | } | ${loaded/ / | } | $ofo | $retrans |"
}
start_ceiling() { # [--spin]
  local side
  for side in "${sides[@]}"; do
    read -r where a b <<<"$side"
    ip netns exec "$where" "${switch[@]}" "$ceiling" "$@" "$a" "$b" &
    forwarder="$forwarder $!"
  done
  sleep 0.5
}
bridge_sides() { # master | nomaster
  local side
  for side in "${sides[@]}"; do
    read -r where a b <<<"$side"
    for v in "$a" "$b"; do
      if [ "$1" = master ]; then ip -n "$where" link set "$v" master ceil-br; else ip -n "$where" link set "$v" nomaster; fi
    done
  done
}
start_podswitch() {
  ip netns exec "$ns" "${daemon_args[@]}" >/dev/null 2>&1 &
  daemon=$!
  # Ready when its control socket answers and both pods' ports are back.
  for _ in $(seq 50); do
    [ "$("$ctl" --socket "/run/podswitch-lab/$lab/node1.sock" port list 2>/dev/null | grep -c af-packet)" -ge 2 ] && return
    sleep 0.1
  done
  echo "ceiling: podswitchd did not come back with its two ports" >&2
  exit 1
}
stop_podswitch() {
  kill "$daemon" || true
  wait "$daemon" 2>/dev/null || true
  daemon=""
}
stop_ceiling() {
  kill $forwarder || true
  wait $forwarder 2>/dev/null || true
  forwarder=""
}

echo "| path | tcp 1 stream (Gbit/s) | tcp 4 streams (Gbit/s) | ping p50 (µs) | ping p99 (µs) | loaded p50 (µs) | loaded p99 (µs) | out of order | retransmitted |"
echo "|---|---|---|---|---|---|---|---|---|"
ip -n "$ns" link add ceil-br type bridge
ip -n "$ns" link set ceil-br up
for _ in $(seq "$rounds"); do
  for path in ${PATHS:-podswitch ceiling spinning bridge}; do
    case $path in
      podswitch)
        if [ -z "${PODS_CPU:-}${SWITCH_CPU:-}${CHAIN:-}" ]; then
          start_podswitch
          measure podswitch
          stop_podswitch
        fi ;;
      ceiling) start_ceiling; measure ceiling; stop_ceiling ;;
      spinning) start_ceiling --spin; measure "ceiling, spinning"; stop_ceiling ;;
      realtime) start_ceiling --realtime; measure "ceiling, realtime"; stop_ceiling ;;
      per-cpu) start_ceiling --per-cpu --gap-us "$gap" --realtime; measure "ceiling, per-CPU realtime"; stop_ceiling ;;
      per-cpu-normal) start_ceiling --per-cpu --gap-us "$gap"; measure "ceiling, per-CPU normal"; stop_ceiling ;;
      by-cpu-normal) start_ceiling --per-cpu --by-cpu; measure "ceiling, by CPU normal"; stop_ceiling ;;
      bridge)
        bridge_sides master
        sleep 1
        measure bridge
        bridge_sides nomaster ;;
      *) echo "ceiling: unknown path $path (podswitch ceiling spinning realtime per-cpu per-cpu-normal by-cpu-normal bridge)" >&2; exit 1 ;;
    esac
  done
done
