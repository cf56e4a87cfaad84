#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup-host.sh
cargo test --workspace --locked "$@"
