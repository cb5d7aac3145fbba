#!/usr/bin/env bash
# podswitch's full test suite: formatting, lints, docs, then every test
# (unit, property, wire vectors, tshark, live kernel vxlan in network
# namespaces). README's test command and .ci/run both call this.
# Run as root: the namespace tests need it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== cargo test"
cargo test --workspace --locked
echo "== concurrency stress, release mode"
PODSWITCH_STRESS_ITERATIONS=3000 cargo test --release --locked -p podswitch-engine --test concurrency
