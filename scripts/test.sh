#!/usr/bin/env bash
# The test command: installs the DynamoDB emulator if missing, starts it,
# runs every test of the workspace against it, and stops it.
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"
trap stop_emulator EXIT
start_emulator
cargo test --workspace --all-targets "$@"
