# shellcheck shell=bash
# Shared by bench/e2e.sh, bench/fidelity.sh and bench/http.sh: logging, a work directory, and a
# cleanup that stops every process the script started (by PID, TERM then KILL) on any exit; also
# starting the upstreams, haproxy and fallacy. Source it, then call `bench_init NAME`; append the
# PID of everything started to PIDS.

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
  for _ in $(seq 1 100); do
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

# fallacy_identity: FALLACY_COMMIT (noting uncommitted changes in src/ or Cargo.*) and
# FALLACY_BUILT (the binary's mtime, noting sources edited after it), for the report.
fallacy_identity() {
  FALLACY_COMMIT=$(git -C "$ROOT" log -1 --format=%h 2>/dev/null || echo "no commit")
  if [ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    FALLACY_COMMIT="$FALLACY_COMMIT + uncommitted changes in src/ or Cargo.*"
  fi
  FALLACY_BUILT=$(date -r "$FALLACY_BIN" '+%Y-%m-%d %H:%M:%S' 2>/dev/null || echo "?")
  if [ -n "$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$FALLACY_BIN" 2>/dev/null | head -n 1)" ]; then
    FALLACY_BUILT="$FALLACY_BUILT, before the last edit of src/ or Cargo.*"
  fi
}

# ensure_haproxy: HAPROXY (its path) and HAPROXY_VERSION; installs the Debian package when haproxy
# is missing, running `apt-get update` first if the plain install fails.
ensure_haproxy() {
  if ! command -v haproxy >/dev/null 2>&1; then
    log "installing haproxy"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y haproxy >"$WORK/apt.log" 2>&1 \
      || { apt-get update >>"$WORK/apt.log" 2>&1 && apt-get install -y haproxy >>"$WORK/apt.log" 2>&1; } \
      || die "could not install haproxy (see $WORK/apt.log)"
  fi
  HAPROXY=$(command -v haproxy)
  # shellcheck disable=SC2034  # for the caller
  HAPROXY_VERSION=$("$HAPROXY" -v 2>/dev/null | awk 'NR == 1 {print $3}') || HAPROXY_VERSION="?"
}

free_ports() { # N: prints N loopback ports that were free a moment ago, space-separated
  python3 - "$1" <<'PYEOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PYEOF
}

wait_accepting() { # ADDR...: waits (at most 10 s each) until every host:port accepts a connection
  python3 - "$@" <<'PYEOF'
import socket, sys, time
for addr in sys.argv[1:]:
    host, port = addr.rsplit(":", 1)
    for _ in range(100):
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit(1)
PYEOF
}

start_haproxy() { # CONFIG ADDR...: checks CONFIG, starts `haproxy -db` with it (HP_PID) and waits
  local cfg=$1; shift  # until every ADDR (its binds) accepts
  "$HAPROXY" -c -q -f "$cfg" >"$WORK/haproxy-check.log" 2>&1 \
    || die "haproxy config rejected: $(cat "$WORK/haproxy-check.log")"
  "$HAPROXY" -db -f "$cfg" >"$WORK/haproxy.log" 2>&1 &
  HP_PID=$!
  PIDS+=("$HP_PID")
  wait_accepting "$@" || die "haproxy did not start: $(cat "$WORK/haproxy.log")"
}

start_fallacy() { # [ARGS...]: `$FALLACY_BIN serve --admin 127.0.0.1:0 ARGS`; FA_PID, ADMIN, FALLACY_VERSION
  "$FALLACY_BIN" serve --admin 127.0.0.1:0 "$@" >"$WORK/fallacy.out" 2>"$WORK/fallacy.err" &
  FA_PID=$!
  PIDS+=("$FA_PID")
  wait_line "$WORK/fallacy.out" 'http://' "$FA_PID" \
    || die "fallacy did not start: $(tail -n 5 "$WORK/fallacy.err")"
  ADMIN=$(sed -n 's#.*\(http://[^ ]*\).*#\1#p' "$WORK/fallacy.out" | sed -n 1p)
  # shellcheck disable=SC2034  # for the caller
  FALLACY_VERSION=$( (curl -s -m 5 "$ADMIN/version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])') 2>/dev/null || echo "?")
}

fallacy_proxy() { # VAR NAME UPSTREAM [PROTOCOL]: creates a proxy on a free port (no toxics) through
  local var=$1 name=$2 upstream=$3 body code addr  # the API; VAR = its bound address
  body="{\"name\":\"$name\",\"listen\":\"127.0.0.1:0\",\"upstream\":\"$upstream\"${4:+,\"protocol\":\"$4\"}}"
  code=$(curl -s -m 10 -o "$WORK/fa-$name.json" -w '%{http_code}' -X POST "$ADMIN/proxies" -d "$body") || code=000
  [ "$code" = 201 ] || die "creating fallacy proxy $name: HTTP $code $(cat "$WORK/fa-$name.json" 2>/dev/null)"
  addr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listen"])' "$WORK/fa-$name.json") \
    || die "creating fallacy proxy $name: no listen address in $(cat "$WORK/fa-$name.json")"
  printf -v "$var" '%s' "$addr"
}
