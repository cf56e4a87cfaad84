#!/usr/bin/env bash
# Runs the fuzz targets with cargo-fuzz on stable Rust (libFuzzer, no
# sanitizer), one after another, each on a scratch copy of its corpus
# (tests/fuzz/corpus/TARGET stays as committed; new inputs are dropped).
#
#   tests/fuzz/run.sh [--seconds S | --runs N] [TARGET...]
#
# Default: 10 seconds per target, every target (what CI runs). Prints each
# target's executions, executions per second and the new coverage; fails on
# the first crash, naming the reproducer (copy it into corpus/TARGET once the
# bug is fixed: the replay test keeps it checked).
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
limit=(-max_total_time=10)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^xen-fuzz$')
fi

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

echo "== building the fuzz targets (cargo fuzz build --sanitizer none)"
(cd fuzz && cargo fuzz build --sanitizer none)

scratch=$(mktemp -d /tmp/xen-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  [ -d "corpus/$t" ] || { echo "no corpus for target $t" >&2; exit 2; }
  mkdir -p "$scratch/$t/work" "$scratch/$t/artifacts"
  cp corpus/"$t"/* "$scratch/$t/work/"
  echo "== $t ${limit[*]}"
  if ! (cd fuzz && cargo fuzz run --sanitizer none "$t" "$scratch/$t/work" -- \
      "${limit[@]}" -print_final_stats=1 -artifact_prefix="$scratch/$t/artifacts/" \
      >"$scratch/$t/log" 2>&1); then
    tail -n 40 "$scratch/$t/log" >&2
    mkdir -p artifacts/"$t"
    cp "$scratch/$t/artifacts/"* artifacts/"$t"/ 2>/dev/null || true
    echo "FAIL: $t crashed; reproducer(s) in tests/fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t/log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/$t/log")
  cov=$(grep -o 'cov: [0-9]*' "$scratch/$t/log" | tail -n 1)
  echo "$t: $runs executions, $rate exec/s, $cov, no crash"
done
