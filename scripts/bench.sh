#!/usr/bin/env bash
# Runs the criterion benchmarks and prints README's table: podswitch's time
# per packet and the ratio against the reference measured in the same run.
# Usage: scripts/bench.sh [criterion filter]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench encap -- "$@" >&2
/usr/bin/env python3 - <<'PY'
import json, os
root = "target/criterion"
def ns(group, name, size):
    path = os.path.join(root, group, name, str(size), "new", "estimates.json")
    if not os.path.exists(path):
        return None
    return json.load(open(path))["median"]["point_estimate"]
print("| operation | inner frame | podswitch | reference (etherparse) | ratio |")
print("|---|---|---|---|---|")
for group in ("encap", "decap"):
    for mode in ("vxlan", "ipip", "udp"):
        for size in (64, 1400):
            ours = ns(group, mode, size)
            if ours is None:
                continue
            ref = ns(group, "reference-etherparse-vxlan", size) if mode == "vxlan" else None
            ratio = f"{ref / ours:.2f}x faster" if ref else "-"
            ref_text = f"{ref:.1f} ns" if ref else "-"
            print(f"| {group} {mode} | {size} B | {ours:.1f} ns | {ref_text} | {ratio} |")
one = ns("encap", "vxlan-oneshot", 64)
if one:
    print(f"| encap vxlan, template built per packet | 64 B | {one:.1f} ns | - | - |")
PY
