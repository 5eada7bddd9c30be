#!/usr/bin/env bash
# HTTP-mode benchmark: direct vs haproxy (mode http) vs fallacy's HTTP proxy, with fallacy's TCP
# proxy for reference, in one run, on loopback. 64 keep-alive connections of `GET /` with a
# 100-byte body. Prints a Markdown table and writes bench/results/http.md (+ .json).
# See bench/README.md. Only processes started here are stopped (by PID, on exit).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

RUNS=""
CONNS=64
OUT="$HERE/results/http.md"

usage() {
  cat <<EOF
usage: bench/http.sh [options]
  --quick             3 trials of 1 s windows (about 1 minute)
  --runs N            trials; the median is reported (default 7, 3 with --quick)
  --conns N           keep-alive connections of http-load (default 64)
  --no-build          do not run cargo build (use the binaries already built)
  --fallacy-bin PATH  fallacy binary (default target/release/fallacy; not built when given)
  --out FILE          Markdown result (default bench/results/http.md; a .json sits beside it)
  --strict            exit 1 when fallacy's HTTP proxy misses the req/s target
  --keep-logs         keep the temporary directory with server and proxy logs
EOF
}

own_option() {
  case "$1" in
    --runs) RUNS=$2 ;;
    --conns) CONNS=$2 ;;
    *) return 1 ;;
  esac
  TOOK=2
}
bench_options "$@"
if [ "$QUICK" = 1 ]; then RUNS=${RUNS:-3}; else RUNS=${RUNS:-7}; fi

bench_init http

# ---------------------------------------------------------------------------------------------
# build; haproxy, the reference proxy (installed when missing)
bench_build 1
fallacy_identity
ensure_haproxy
raise_nofile

# ---------------------------------------------------------------------------------------------
# the upstream: HTTP/1.1 keep-alive, 100-byte body, on a free loopback port it picks itself
start_upstream http http-server --body 100

# ---------------------------------------------------------------------------------------------
# haproxy in mode http: keep-alive to the client and to the server, no logging
HP_ADDR="127.0.0.1:$(free_ports 1)"
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    maxconn 4000
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 10s
    timeout http-keep-alive 300s
listen bench_http
    bind $HP_ADDR
    server up ${UP[http]}
EOF
start_haproxy "$WORK/haproxy.cfg" "$HP_ADDR"
log "haproxy $HAPROXY_VERSION, mode http (pid $HP_PID) on $HP_ADDR"

# ---------------------------------------------------------------------------------------------
# fallacy: one HTTP proxy and one TCP proxy to the same upstream, without toxics
# shellcheck disable=SC2119  # no extra arguments
start_fallacy
fallacy_proxy FA_HTTP bench_http "${UP[http]}" http
fallacy_proxy FA_TCP bench_tcp "${UP[http]}" tcp
log "fallacy $FALLACY_VERSION ($FALLACY_COMMIT, built $FALLACY_BUILT), pid $FA_PID, admin $ADMIN;" \
  "HTTP proxy on $FA_HTTP, TCP proxy on $FA_TCP"

# ---------------------------------------------------------------------------------------------
# measure
python3 - "$WORK/config.json" <<EOF
import json, sys
cfg = {
  "loadgen": "$LOADGEN",
  "admin": "$ADMIN",
  "fallacy_log": "$WORK/fallacy.err",
  "haproxy_log": "$WORK/haproxy.log",
  "targets": {
    "direct": {"http": "${UP[http]}", "pid": None},
    "haproxy": {"http": "$HP_ADDR", "pid": $HP_PID},
    "fallacy_http": {"http": "$FA_HTTP", "pid": $FA_PID, "proxy": "bench_http"},
    "fallacy_tcp": {"http": "$FA_TCP", "pid": $FA_PID, "proxy": "bench_tcp"},
  },
  "pids": [$(IFS=,; echo "${PIDS[*]}")],
  "meta": {"haproxy_version": "$HAPROXY_VERSION", "fallacy_version": "$FALLACY_VERSION",
           "fallacy_commit": "$FALLACY_COMMIT", "fallacy_built": "$FALLACY_BUILT",
           "fallacy_bin": "$FALLACY_BIN"},
}
json.dump(cfg, open(sys.argv[1], "w"), indent=1)
EOF

run_driver http_bench.py --runs "$RUNS" --conns "$CONNS" --out "$OUT"
