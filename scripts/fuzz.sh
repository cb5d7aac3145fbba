#!/usr/bin/env bash
# Runs podswitch's cargo-fuzz targets (fuzz/) for a fixed time each, one
# after the other, one fuzzing process at a time, with each corpus kept in
# fuzz/corpus/<target>/ and minimised afterwards (cargo fuzz cmin, to the
# inputs that each add an edge), so that what is committed stays small.
# Prints each target's executions and time from libFuzzer's final stats;
# exits non-zero, naming the input, if a target crashed (the input is in
# fuzz/artifacts/<target>/).
#
# Not part of CI: it takes as long as it is given.
#
# Usage: scripts/fuzz.sh [-t SECONDS] [--no-cmin] [--build] [TARGET...]
#   -t SECONDS   time per target (default: $FUZZ_SECONDS, else 60)
#   --no-cmin    keep the corpus as the run left it
#   --build      only build every target (cargo fuzz build) and stop
#   TARGET...    the targets to run (default: every one, `cargo fuzz list`)
#
# cargo-fuzz is installed if missing. It needs nightly compiler flags
# (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets a stable toolchain accept
# them. Set CARGO_BUILD_JOBS to share the machine while it compiles.
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$script")/../fuzz"

seconds=${FUZZ_SECONDS:-60}
cmin=1
build_only=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        -t) seconds=${2:?-t needs a number of seconds}; shift 2 ;;
        --no-cmin) cmin=0; shift ;;
        --build) build_only=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$script"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
case "$seconds" in
    ''|*[!0-9]*|0) echo "fuzz.sh: -t wants a whole number of seconds, not '$seconds'" >&2; exit 2 ;;
esac

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

echo "== cargo fuzz build (every target, AddressSanitizer)"
cargo fuzz build
[ "$build_only" = 1 ] && exit 0

mapfile -t known < <(cargo fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${known[@]}")
fi
for t in "${targets[@]}"; do
    if ! printf '%s\n' "${known[@]}" | grep -qx -- "$t"; then
        echo "fuzz.sh: no target '$t' (targets: ${known[*]})" >&2
        exit 2
    fi
done

crashed=()
summary=()
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    mkdir -p "$corpus" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "== $t: ${seconds} s, corpus $corpus ($(find "$corpus" -type f | wc -l) inputs), log fuzz/$log"
    status=0
    # One process, one job: -fork/-jobs/-workers stay at their defaults.
    cargo fuzz run "$t" "$corpus" -- \
        -max_total_time="$seconds" -timeout=25 -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    # A crash ends the run before its "Done" line: execs / rate is its time.
    if [ -z "$took" ] && [ -n "$execs" ] && [ "${rate:-0}" -gt 0 ]; then
        took=$((execs / rate))
    fi
    result=ok
    if [ "$status" -ne 0 ]; then
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        result="CRASHED: ${artifact:-see fuzz/$log}"
        crashed+=("$t: ${artifact:-fuzz/$log}")
        grep -m1 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer" "$log" || true
    elif [ "$cmin" = 1 ]; then
        # Inputs that each add an edge (not a hit count): the committed
        # corpus stays small; a run rebuilds the hit-count variety quickly.
        cargo fuzz cmin "$t" "$corpus" -- -use_counters=0 >"artifacts/$t/last-cmin.log" 2>&1 ||
            echo "   (cmin failed: fuzz/artifacts/$t/last-cmin.log)"
    fi
    line=$(printf '%-16s %6s s %12s execs %8s execs/s %6s inputs  %s' \
        "$t" "${took:-?}" "${execs:-?}" "${rate:-?}" "$(find "$corpus" -type f | wc -l)" "$result")
    echo "   $line"
    summary+=("$line")
done

echo "== summary ($(date -u +%Y-%m-%d), ${seconds} s a target)"
printf '%s\n' "${summary[@]}"
if [ ${#crashed[@]} -gt 0 ]; then
    echo "== crashes (reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET FILE)"
    printf '%s\n' "${crashed[@]}"
    exit 1
fi
