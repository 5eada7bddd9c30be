#!/usr/bin/env bash
# End-to-end benchmark: direct connection vs haproxy (mode tcp) vs fallacy, in one run, on
# loopback. Prints the PRODUCT.md section 8 table and writes bench/results/latest.md (+ .json).
# See bench/README.md. Only processes started here are stopped (by PID, on exit).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

QUICK=0
RUNS=""
IDLE_CONNS=""
BUILD=1
WITH_FALLACY=1
FALLACY_BIN="$ROOT/target/release/fallacy"
OUT="$HERE/results/latest.md"
STRICT=""
KEEP=0

usage() {
  cat <<EOF
usage: bench/e2e.sh [options]
  --quick             1 run, short durations, 1000 idle connections (about 1 minute)
  --runs N            runs per target; the median is reported (default 5)
  --idle-conns N      idle connections for the memory figure (default 2000)
  --no-build          do not run cargo build (use the binaries already built)
  --fallacy-bin PATH  fallacy binary (default target/release/fallacy)
  --no-fallacy        measure direct and haproxy only
  --out FILE          Markdown result (default bench/results/latest.md; a .json sits beside it)
  --strict            exit 1 when fallacy misses a target
  --keep-logs         keep the temporary directory with server and proxy logs
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --runs) RUNS="$2"; shift ;;
    --idle-conns) IDLE_CONNS="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --fallacy-bin) FALLACY_BIN="$2"; shift ;;
    --no-fallacy) WITH_FALLACY=0 ;;
    --out) OUT="$2"; shift ;;
    --strict) STRICT="--strict" ;;
    --keep-logs) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  RUNS=${RUNS:-1}; IDLE_CONNS=${IDLE_CONNS:-1000}
else
  RUNS=${RUNS:-5}; IDLE_CONNS=${IDLE_CONNS:-2000}
fi

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
bench_init e2e

# ---------------------------------------------------------------------------------------------
# build
bench_build "$WITH_FALLACY"

# haproxy, the reference proxy (installed when missing)
ensure_haproxy

# file descriptors: idle connections pass through client, proxy and server
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $((IDLE_CONNS * 2 + 500)) -gt "$NOFILE" ]; then
  IDLE_CONNS=$(( (NOFILE - 500) / 2 ))
  log "open-file limit $NOFILE: using $IDLE_CONNS idle connections"
fi

# ---------------------------------------------------------------------------------------------
# upstream servers (loadgen), each on a free loopback port it picks itself
SOURCE_BYTES=4000000000
[ "$QUICK" = 1 ] && SOURCE_BYTES=2000000000

start_upstream source source --bytes "$SOURCE_BYTES"
start_upstream echo echo
start_upstream http http-server --body 100
start_upstream idle idle-server

# ---------------------------------------------------------------------------------------------
# haproxy in mode tcp on free ports, to the same upstreams
read -r -a HP_PORTS <<<"$(free_ports 4)"
HP_MAXCONN=8000
if [ "$NOFILE" != unlimited ] && [ $(( (NOFILE - 200) / 2 )) -lt "$HP_MAXCONN" ]; then
  HP_MAXCONN=$(( (NOFILE - 200) / 2 ))
fi
declare -A HP
{
  echo "global"
  echo "    maxconn $HP_MAXCONN"
  echo "defaults"
  echo "    mode tcp"
  echo "    maxconn $HP_MAXCONN"
  echo "    timeout connect 5s"
  echo "    timeout client 300s"
  echo "    timeout server 300s"
  i=0
  for role in source echo http idle; do
    HP[$role]="127.0.0.1:${HP_PORTS[$i]}"
    echo "listen bench_$role"
    echo "    bind ${HP[$role]}"
    echo "    server up ${UP[$role]}"
    i=$((i + 1))
  done
} >"$WORK/haproxy.cfg"
start_haproxy "$WORK/haproxy.cfg" "${HP[@]}"
log "haproxy $HAPROXY_VERSION (pid $HP_PID) on ${HP[*]}"

# ---------------------------------------------------------------------------------------------
# fallacy: admin API on a free port, one proxy per upstream created through the API
declare -A FA
FA_PID=""
FALLACY_VERSION="n/a"
if [ "$WITH_FALLACY" = 1 ]; then
  # shellcheck disable=SC2119  # no extra arguments
  start_fallacy
  for role in source echo http idle; do
    fallacy_proxy "FA[$role]" "bench_$role" "${UP[$role]}"
  done
  FALLACY_VERSION="$FALLACY_VERSION ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit'))"
  log "fallacy $FALLACY_VERSION (pid $FA_PID), admin $ADMIN, proxies on ${FA[*]}"
fi

# ---------------------------------------------------------------------------------------------
# measure
python3 - "$WORK/config.json" <<EOF
import json, sys
def t(src, echo, http, idle, pid):
    return {"source": src, "echo": echo, "http": http, "idle": idle, "pid": pid}
cfg = {
  "loadgen": "$LOADGEN",
  "targets": {
    "direct": t("${UP[source]}", "${UP[echo]}", "${UP[http]}", "${UP[idle]}", None),
    "haproxy": t("${HP[source]}", "${HP[echo]}", "${HP[http]}", "${HP[idle]}", $HP_PID),
    "fallacy": t("${FA[source]:-}", "${FA[echo]:-}", "${FA[http]:-}", "${FA[idle]:-}", ${FA_PID:-None}) if "$WITH_FALLACY" == "1" else None,
  },
  "pids": [$(IFS=,; echo "${PIDS[*]}")],
  "meta": {"haproxy_version": "$HAPROXY_VERSION", "fallacy_version": "$FALLACY_VERSION"},
}
json.dump(cfg, open(sys.argv[1], "w"), indent=1)
EOF

EXTRA=()
[ "$QUICK" = 1 ] && EXTRA+=(--quick)
[ -n "$STRICT" ] && EXTRA+=("$STRICT")
# in the background, so that a signal reaches the trap (and the cleanup) at once
python3 "$HERE/e2e.py" --config "$WORK/config.json" --runs "$RUNS" --idle-conns "$IDLE_CONNS" \
  --out "$OUT" "${EXTRA[@]}" &
PY_PID=$!
PIDS=("$PY_PID" "${PIDS[@]}")
rc=0
wait "$PY_PID" || rc=$?
PIDS=("${PIDS[@]:1}")
exit "$rc"
