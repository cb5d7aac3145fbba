#!/usr/bin/env bash
# Instructions per packet through the pipeline, per case, counted by
# valgrind (callgrind): unlike time, the count does not drift with the
# VM. Each case runs twice, 100 and 1100 batches of 32 frames; the
# difference, over 32,000 frames, leaves set-up out.
# Usage: scripts/instructions.sh   (needs valgrind: scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "instructions: valgrind is missing (scripts/setup.sh installs it)" >&2; exit 1; }
bin=$(cargo bench --locked --bench instructions --no-run --message-format=json 2>/dev/null |
  /usr/bin/env python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "instructions" and m.get("executable"):
        print(m["executable"])')
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
echo "| case | instructions per packet |"
echo "|---|---|"
for case in $("$bin"); do
  small=$(count "$case" 100)
  large=$(count "$case" 1100)
  echo "| $case | $(( (large - small) / (1000 * 32) )) |"
done
