# shellcheck shell=bash
# Shared by bench/perf, bench/fidelity.sh and bench/http.sh: logging, a work directory, and a
# cleanup that stops every process the script started (by PID, TERM then KILL; with the direct
# children of each, such as socat's per-connection processes) on any exit; also installing the
# tools and starting the upstreams, haproxy, socat and fallacy. Source it, then call
# `bench_init NAME`; append the PID of everything started to PIDS.

# bench_options "$@": parses the options every script shares (--quick, --no-build, --fallacy-bin
# PATH, --out FILE, --strict, --keep-logs, -h/--help, which prints the script's `usage`) and sets
# their defaults (OUT excepted); the others go to the script's `own_option OPT VALUE`, which sets
# them and TOOK=2 for an option with a value, or returns 1 for an unknown option.
# shellcheck disable=SC2034  # OUT is for the caller
bench_options() {
  QUICK=0 BUILD=1 STRICT="" KEEP=0 FALLACY_BIN="$ROOT/target/release/fallacy"
  while [ $# -gt 0 ]; do
    TOOK=1
    case "$1" in
      --quick) QUICK=1 ;;
      --no-build) BUILD=0 ;;
      --fallacy-bin) FALLACY_BIN=${2:-}; TOOK=2 ;;
      --out) OUT=${2:-}; TOOK=2 ;;
      --strict) STRICT="--strict" ;;
      --keep-logs) KEEP=1 ;;
      -h|--help) usage; exit 0 ;;
      *) own_option "$1" "${2:-}" || { echo "unknown option: $1" >&2; usage >&2; exit 2; } ;;
    esac
    [ "$TOOK" -le $# ] || { echo "$1 needs a value" >&2; exit 2; }
    shift "$TOOK"
  done
}

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
  local all=("${PIDS[@]}") pid
  # the children of our processes (socat forks one per connection) are ours too
  for pid in "${PIDS[@]}"; do
    # shellcheck disable=SC2207  # PIDs have no spaces
    all+=($(pgrep -P "$pid" 2>/dev/null))
  done
  for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 30); do
    local left=0
    for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null; done
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

# ensure_tools CMD[:PACKAGE]...: installs the Debian packages of the commands that are missing
# (one `apt-get install -y`, with `apt-get update` first only if the plain install fails).
ensure_tools() {
  local want=() spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 || want+=("${spec#*:}")
  done
  [ "${#want[@]}" = 0 ] && return 0
  log "installing ${want[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${want[@]}" >"$WORK/apt.log" 2>&1 \
    || { apt-get update >>"$WORK/apt.log" 2>&1 && apt-get install -y "${want[@]}" >>"$WORK/apt.log" 2>&1; } \
    || die "could not install ${want[*]} (see $WORK/apt.log)"
}

# ensure_haproxy: HAPROXY (its path) and HAPROXY_VERSION; installs the Debian package when missing.
ensure_haproxy() {
  ensure_tools haproxy
  HAPROXY=$(command -v haproxy)
  # shellcheck disable=SC2034  # for the caller
  HAPROXY_VERSION=$("$HAPROXY" -v 2>/dev/null | awk 'NR == 1 {print $3}') || HAPROXY_VERSION="?"
}

# raise_nofile: soft open-file limit up to the hard one (for this shell and what it starts);
# NOFILE is the result ("unlimited" or a number).
raise_nofile() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  # shellcheck disable=SC2034  # for the caller
  NOFILE=$(ulimit -n)
}

# run_driver SCRIPT ARGS...: `python3 $HERE/SCRIPT --config $WORK/config.json ARGS`, with --quick
# and --strict when QUICK=1 and STRICT are set; in the background, so that a signal reaches the
# trap (and the cleanup) at once. Exits with its status.
run_driver() {
  local extra=() py rc=0
  [ "$QUICK" = 1 ] && extra+=(--quick)
  [ -n "$STRICT" ] && extra+=("$STRICT")
  python3 "$HERE/$1" --config "$WORK/config.json" "${@:2}" "${extra[@]}" &
  py=$!
  PIDS=("$py" "${PIDS[@]}")
  wait "$py" || rc=$?
  PIDS=("${PIDS[@]:1}")
  exit "$rc"
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

declare -A SOCAT SOCAT_PID
start_socat() { # ROLE UPSTREAM: `socat TCP-LISTEN:PORT,fork TCP:UPSTREAM` on a free port (one process
  local role=$1 up=$2 port pid  # per connection, TCP_NODELAY both sides); SOCAT[ROLE]=addr
  port=$(free_ports 1)
  socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr,backlog=4096,nodelay" "TCP:$up,nodelay" \
    2>"$WORK/socat-$role.log" &
  pid=$!
  PIDS+=("$pid")
  wait_accepting "127.0.0.1:$port" || die "socat $role did not start: $(cat "$WORK/socat-$role.log")"
  # shellcheck disable=SC2034  # for the caller
  SOCAT[$role]="127.0.0.1:$port"
  # shellcheck disable=SC2034
  SOCAT_PID[$role]=$pid
}

start_iperf3() { # ROLE: a long-running `iperf3 -s` on a free loopback port; UP[ROLE]=addr
  local role=$1 port pid
  port=$(free_ports 1)
  # --rcv-timeout: a test whose client vanished is given up after 10 s without data
  iperf3 -s -B 127.0.0.1 -p "$port" -i 0 --forceflush --rcv-timeout 10000 >"$WORK/up-$role.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_line "$WORK/up-$role.log" "listening on $port" "$pid" || die "iperf3 -s did not start: $(cat "$WORK/up-$role.log")"
  UP[$role]="127.0.0.1:$port"
  log "upstream $role (iperf3 -s) on ${UP[$role]} (pid $pid)"
}
