#!/usr/bin/env bash
# `make bench`: the figures of docs/performance.md, in one run.
#   1. builds the release `authorize` (its cold start and size are measured);
#   2. CPU per authorization without I/O (criterion, benches/cpu.rs);
#   3. starts the DynamoDB emulator and runs benches/latency.rs: the floor,
#      warm and cold authorize and settle side by side, then cold starts of
#      the release binary against a minimal Lambda runtime API; prints one
#      table with every figure (also written to target/bench-results.md).
# BENCH_N (default 2000) and BENCH_STARTS (default 20) change the counts.
# Nothing asserts a timing: the figures are reported, never enforced.
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"

TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export CARGO_TARGET_DIR="$TARGET_DIR"
export CRITERION_HOME="$TARGET_DIR/criterion"
export AUTHORIZE_BIN="$TARGET_DIR/release/authorize"

echo "== release build of authorize" >&2
cargo build --release -p authorize
ls -l "$AUTHORIZE_BIN" >&2

echo "== CPU per authorization, no I/O (criterion)" >&2
cargo bench --bench cpu

echo "== latency against the emulator, cold start" >&2
cargo bench --bench latency --no-run
trap stop_emulator EXIT
start_emulator
cargo bench --bench latency
