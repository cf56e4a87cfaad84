#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the whole workspace's tests,
# plus the loom model check of the ring's notification protocol.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup-host.sh
cargo test --workspace --locked "$@"
echo "== loom: the ring's notify/final-check protocol loses no wake-up"
RUSTFLAGS="--cfg loom" cargo test -p xen-ring --release --locked --test loom \
  --target-dir "${CARGO_TARGET_DIR:-target}/loom"
