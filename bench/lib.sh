# Shared by bench/e2e.sh and bench/fidelity.sh: logging, a work directory, and a cleanup that
# stops every process the script started (by PID, TERM then KILL) on any exit. Source it, then
# call `bench_init NAME`; append the PID of everything started to PIDS.

bench_init() {
  BENCH_NAME=$1
  WORK=$(mktemp -d "/tmp/fallacy-$BENCH_NAME.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
}

log() { echo "[$BENCH_NAME $(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

bench_cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 30); do
    local left=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
    log "logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}

# bench_build WITH_FALLACY: builds loadgen, and fallacy too (release) when WITH_FALLACY=1 and
# FALLACY_BIN is the project's own; honours BUILD=0 (--no-build).
bench_build() {
  LOADGEN="$HERE/loadgen/target/release/loadgen"
  if [ "$BUILD" = 1 ]; then
    log "building loadgen (release)"
    (cd "$HERE/loadgen" && cargo build --release --quiet) || die "loadgen build failed"
    if [ "$1" = 1 ] && [ "$FALLACY_BIN" = "$ROOT/target/release/fallacy" ]; then
      log "building fallacy (release)"
      (cd "$ROOT" && cargo build --release --quiet --bin fallacy) || die "fallacy build failed"
    fi
  fi
  [ -x "$LOADGEN" ] || die "$LOADGEN missing (run without --no-build)"
  if [ "$1" = 1 ]; then
    [ -x "$FALLACY_BIN" ] || die "$FALLACY_BIN missing (build it first)"
  fi
}

# Upstream servers (loadgen) live at most this long, whatever happens to the script.
SERVER_LIFETIME=900

wait_line() { # FILE PATTERN PID: wait (at most 10 s) for a line matching PATTERN in FILE
  local i
  for i in $(seq 1 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
json_listen() { sed -n 's/.*"listen":"\([^"]*\)".*/\1/p' "$1" | sed -n 1p; }

declare -A UP
start_upstream() { # ROLE SUBCOMMAND [ARGS...]: a loadgen server on a port it picks; UP[ROLE]=addr
  local role=$1; shift
  "$LOADGEN" "$@" --listen 127.0.0.1:0 --duration "$SERVER_LIFETIME" >"$WORK/up-$role.json" 2>"$WORK/up-$role.err" &
  local pid=$!
  PIDS+=("$pid")
  wait_line "$WORK/up-$role.json" '"listen"' "$pid" || die "upstream $role did not start: $(cat "$WORK/up-$role.err")"
  UP[$role]=$(json_listen "$WORK/up-$role.json")
  log "upstream $role on ${UP[$role]} (pid $pid)"
}
