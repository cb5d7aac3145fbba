#!/usr/bin/env bash
# Runs the criterion benchmarks and prints README's tables: podswitch's
# figures and the ratio against the reference measured in the same run.
# Usage: scripts/bench.sh [bench ...]   (default: encap tables routes pipeline)
set -euo pipefail
cd "$(dirname "$0")/.."
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(encap tables routes pipeline)
log=target/bench-stderr.log
: > "$log"
for b in "${benches[@]}"; do
  cargo bench --locked --bench "$b" 2>>"$log" >&2
done
/usr/bin/env python3 - "$log" <<'PY'
import json, os, re, sys
root = "target/criterion"
def ns(*parts):
    path = os.path.join(root, *[str(p) for p in parts], "new", "estimates.json")
    if not os.path.exists(path):
        return None
    return json.load(open(path))["median"]["point_estimate"]

if ns("encap", "vxlan", 64):
    print("Encapsulation and decapsulation, per packet:\n")
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
    print()

if ns("fib", "lookup", 1000):
    built = {}
    for line in open(sys.argv[1]):
        m = re.match(r"fib (\d+) routes: build ([\d.]+) ms \(([\d.]+) M routes/s\), ([\d.]+) MiB", line)
        if m:
            built[int(m.group(1))] = (float(m.group(2)), float(m.group(3)), float(m.group(4)))
    print("FIB (8-8-8-8 trie, copy-on-write), random addresses in 10.0.0.0/8, per lookup:\n")
    print("| routes | lookup | reference (tree bitmap) | ratio | full build | table memory |")
    print("|---|---|---|---|---|---|")
    for n in (1000, 10000, 100000):
        ours = ns("fib", "lookup", n) / 1024
        ref = ns("fib", "reference-treebitmap-lookup", n) / 1024
        build = ns("fib", "build", n)
        b = built.get(n)
        mem = f"{b[2]:.2f} MiB" if b else "-"
        print(f"| {n:,} | {ours:.1f} ns | {ref:.1f} ns | {ref / ours:.2f}x faster | {build / 1e6:.2f} ms ({n / (build / 1e9) / 1e6:.1f} M routes/s) | {mem} |")
    print()

if ns("routes", "add-delete", 1000):
    churn = {}
    for line in open(sys.argv[1]):
        m = re.match(r"routes (\d+): (\d+) changes during lookup-churn, ([\d.]+) us each", line)
        if m:
            churn[int(m.group(1))] = (int(m.group(2)), float(m.group(3)))
    print("Route changes through `Tables` (validate, edit, publish), at N routes:\n")
    print("| routes | add + delete | lookup, idle | lookup, a change every ms | forwarding, idle | forwarding, a change every ms | changes made (cost each) |")
    print("|---|---|---|---|---|---|---|")
    for n in (1000, 10000, 100000):
        both = ns("routes", "add-delete", n)
        idle = ns("routes", "lookup-idle", n) / 1024
        busy = ns("routes", "lookup-churn", n) / 1024
        fwd_idle = 32 / ns("routes", "forward-idle", n) * 1e3
        fwd_busy = 32 / ns("routes", "forward-churn", n) * 1e3
        made = churn.get(n)
        made = f"{made[0]:,} ({made[1]:.1f} us)" if made else "-"
        print(f"| {n:,} | {both / 1e3:.1f} us | {idle:.1f} ns | {busy:.1f} ns ({idle / busy:.2f}x) | {fwd_idle:.1f} Mpps | {fwd_busy:.1f} Mpps ({fwd_busy / fwd_idle:.2f}x) | {made} |")
    print()

if ns("fdb", "lookup-hit"):
    print("FDB, per operation (4096 MACs learned):\n")
    print("| operation | time |")
    print("|---|---|")
    for name in ("lookup-hit", "learn-refresh", "learn-new"):
        print(f"| {name} | {ns('fdb', name) / 1024:.1f} ns |")
    print()

if ns("pipeline", "vxlan-encap"):
    ref = ns("pipeline", "reference-io-only") / 32
    print("Whole pipeline, 64-byte frames, batches of 32, one core:\n")
    print("| case | per packet | rate | of which port I/O (reference) |")
    print("|---|---|---|---|")
    for name in ("same-node-switch", "vxlan-encap", "vxlan-decap", "ipip-encap"):
        per = ns("pipeline", name) / 32
        print(f"| {name} | {per:.1f} ns | {1e3 / per:.1f} Mpps | {ref:.1f} ns ({ref / per * 100:.0f} %) |")
PY
