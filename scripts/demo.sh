#!/usr/bin/env bash
# The demo on built-in defaults: how a pod's packet crosses nodes under
# flannel VXLAN, Calico IPIP and flannel UDP, byte by byte; every decision
# podswitch's pipeline makes about it on both nodes; and the frame the Linux
# kernel's own vxlan device sent, explained by podswitchctl. Nothing leaves
# this machine: the walkthroughs build frames and run the engine in-process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

say "building podswitch (release)"
cargo build --release --locked --quiet --bin podswitchctl --example encap_walkthrough --example pipeline_walkthrough

say "walkthrough: pod 10.244.2.2 on node02 pings pod 10.244.1.2 on node01, three ways"
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
