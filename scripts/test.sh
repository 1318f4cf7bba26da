#!/usr/bin/env bash
# The test command: installs the DynamoDB emulator if missing, starts it,
# runs every test of the workspace against it (or the cargo test arguments
# given), and stops it.
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"
trap stop_emulator EXIT
start_emulator
# With arguments, they go to cargo test as they are (e.g.
# `scripts/test.sh -p edge-budget --test e2e load::`); without, everything runs.
if [ "$#" -gt 0 ]; then
    cargo test "$@"
else
    # Benches are not tests: `make bench` runs them.
    cargo test --workspace --lib --bins --tests
fi
