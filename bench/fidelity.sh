#!/usr/bin/env bash
# Fault fidelity benchmark: how faithful fallacy's latency, latency-distribution and bandwidth
# toxics are, measured through the release binary on loopback, with a direct connection measured
# in the same run as the reference. Prints a Markdown table and writes bench/results/fidelity.md
# (+ .json). See bench/README.md. Only processes started here are stopped (by PID, on exit).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

OUT="$HERE/results/fidelity.md"
SEED=1

usage() {
  cat <<EOF
usage: bench/fidelity.sh [options]
  --quick             fewer samples and repetitions (under 2 minutes)
  --no-build          do not run cargo build (use the binaries already built)
  --fallacy-bin PATH  fallacy binary (default target/release/fallacy; not built when given)
  --seed N            fallacy serve --seed N (default 1)
  --out FILE          Markdown result (default bench/results/fidelity.md; a .json sits beside it)
  --strict            exit 1 when a target is missed (an unsupported toxic is not a miss)
  --keep-logs         keep the temporary directory with server and fallacy logs
EOF
}

own_option() {
  case "$1" in
    --seed) SEED=$2 ;;
    *) return 1 ;;
  esac
  TOOK=2
}
bench_options "$@"

bench_init fidelity

# ---------------------------------------------------------------------------------------------
# build
bench_build 1

# which fallacy this is: the commit, and whether the source tree differed from it
fallacy_identity

# ---------------------------------------------------------------------------------------------
# upstream servers (loadgen), each on a free loopback port it picks itself

# the source writes far more than any client reads; clients stop on their own deadline
start_upstream source source --bytes 1000000000000
start_upstream echo echo
# one-way delays: answers each message with its kernel receive timestamp minus its send time
start_upstream stamp stamp-server

# ---------------------------------------------------------------------------------------------
# fallacy: admin API on a free port; fidelity.py creates the proxies and toxics through it
start_fallacy --seed "$SEED"
log "fallacy $FALLACY_VERSION ($FALLACY_COMMIT, built $FALLACY_BUILT), pid $FA_PID, admin $ADMIN"

# ---------------------------------------------------------------------------------------------
# measure
python3 - "$WORK/config.json" <<EOF
import json, sys
cfg = {
  "loadgen": "$LOADGEN",
  "admin": "$ADMIN",
  "upstreams": {"echo": "${UP[echo]}", "source": "${UP[source]}", "stamp": "${UP[stamp]}"},
  "fallacy_pid": $FA_PID,
  "pids": [$(IFS=,; echo "${PIDS[*]}")],
  "meta": {"fallacy_version": "$FALLACY_VERSION", "fallacy_commit": "$FALLACY_COMMIT",
           "fallacy_built": "$FALLACY_BUILT", "fallacy_bin": "$FALLACY_BIN", "seed": "$SEED"},
}
json.dump(cfg, open(sys.argv[1], "w"), indent=1)
EOF

run_driver fidelity.py --out "$OUT"
