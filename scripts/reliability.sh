#!/usr/bin/env bash
# The long reliability run (see docs/reliability.md): 20 seeded load runs of
# 384 authorizations by 64 concurrent tasks each, and 20 conservation seeds of 300
# steps, against the DynamoDB emulator (started and stopped here).
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"
trap stop_emulator EXIT
start_emulator
export LOAD_RUNS="${LOAD_RUNS:-20}" LOAD_REQUESTS="${LOAD_REQUESTS:-384}"
export CONSERVATION_SEEDS="${CONSERVATION_SEEDS:-20}" CONSERVATION_STEPS="${CONSERVATION_STEPS:-300}"
export FUZZ_CASES="${FUZZ_CASES:-20000}"
cargo test -p edge-budget --test e2e -- --nocapture --test-threads 1 load:: conservation:: fuzz:: faults::
