#!/bin/sh
# Interleaved before/after comparison of two blkbench builds on a shared
# machine: ROUNDS rounds, each running every build once (`--reps 1`, with
# its own fio-native reference), then per build and load the median and
# min..max over the rounds of the blkfront/fio-native ratio of that run.
#
#   tests/blkbench/scripts/compare.sh ROUNDS NAME=DIR[=BLKLOAD_ARGS] ...
#
# DIR holds blkbench, blkload, xl, backendd and xen-pvguest of one build; e.g.
#   compare.sh 5 before=/tmp/base after=target/release 'after-q2=target/release=--queues 2'
set -eu
rounds=$1; shift
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  for spec in "$@"; do
    name=${spec%%=*}; rest=${spec#*=}
    dir=${rest%%=*}; args=""
    [ "$rest" != "$dir" ] && args=${rest#*=}
    if [ -n "$args" ]; then
      "$dir/blkbench" --json --reps 1 --guest-fio false --blkload-args "$args" >> "$out/$name.jsonl"
    else
      "$dir/blkbench" --json --reps 1 --guest-fio false >> "$out/$name.jsonl"
    fi
  done
done
python3 - "$out" "$@" <<'PY'
import json, statistics, sys, os
out = sys.argv[1]
for spec in sys.argv[2:]:
    name = spec.split("=", 1)[0]
    rows = [json.loads(l) for l in open(os.path.join(out, name + ".jsonl"))]
    # Runs come in blocks: native rows then blkfront rows, one block per round.
    by = {}
    for row in rows:
        by.setdefault((row["impl"], row["pattern"]), []).append(row)
    for pat in ("randread", "seqread", "seqwrite"):
        nat = by.get(("fio-native", pat), [])
        fr = by.get(("blkfront", pat), [])
        ratios = [f["iops"] / n["iops"] for f, n in zip(fr, nat) if n["iops"] > 0]
        if not ratios:
            continue
        med = lambda v: statistics.median(v)
        print(json.dumps({
            "build": name, "pattern": pat, "rounds": len(ratios),
            "ratio": round(med(ratios), 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "blkfront_MBps": round(med([f["bytes_per_s"] for f in fr]) / 1e6),
            "blkfront_MBps_min": round(min(f["bytes_per_s"] for f in fr) / 1e6),
            "blkfront_MBps_max": round(max(f["bytes_per_s"] for f in fr) / 1e6),
            "native_MBps": round(med([n["bytes_per_s"] for n in nat]) / 1e6),
            "native_MBps_min": round(min(n["bytes_per_s"] for n in nat) / 1e6),
            "native_MBps_max": round(max(n["bytes_per_s"] for n in nat) / 1e6),
            "blkfront_iops": round(med([f["iops"] for f in fr])),
            "native_iops": round(med([n["iops"] for n in nat])),
        }))
PY
echo "raw JSON lines: $out" >&2
