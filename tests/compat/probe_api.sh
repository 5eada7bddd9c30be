#!/usr/bin/env bash
# Probe the Toxiproxy-compatible admin API at URL for the details that clients and
# scripts notice (PRODUCT.md section 4.1), printing one block per probe:
#
#   ### NN label
#   > METHOD PATH
#   > header: ...            (only request headers that differ from the defaults)
#   > body: ...              (exactly what was sent, or <none>)
#   < status: NNN
#   < content-type: ...      (or <none>)
#   < request-id: yes|no
#   < body: ...              (JSON canonicalised with sorted keys, or raw text, or <empty>)
#
# so that two runs (Toxiproxy vs fallacy) can be diffed:
#
#   bash tests/compat/probe_api.sh http://127.0.0.1:PORT > /tmp/probe.txt
#   diff tests/compat/toxiproxy-2.12.0-probe.txt /tmp/probe.txt
#
# Run it against a fresh server (no proxies). Ephemeral ports (4-5 digits after a host)
# are printed as PORT. Proxies it creates are named probe_* and removed at the end.
# Requires bash, curl and python3; talks to loopback only.
set -u

URL="${1:?usage: probe_api.sh http://127.0.0.1:PORT}"
URL="${URL%/}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
N=0
DEFAULT_CT="application/json"
UA="probe_api.sh"

# Resolve the interpreter once (a version-manager shim costs time on every call).
PY="$(python3 -c 'import sys; print(sys.executable)')"

free_port() {
  "$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# Formatter for one probe block: canonical JSON bodies, ephemeral ports -> PORT.
cat >"$TMP/fmt.py" <<'PY'
import json, re, sys

n, label, method, path, extra, sent_file, status, hdr_file, body_file = sys.argv[1:10]

def norm(text):
    # host:port with a port in the unprivileged range -> host:PORT (ports > 65535 stay as sent)
    def sub(m):
        port = int(m.group(2))
        return m.group(1) + ("PORT" if 1024 <= port <= 65535 else m.group(2))
    return re.sub(r"((?:\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-fA-F:]*\]):)(\d{4,5})(?!\d)", sub, text)

def show(raw):
    if not raw:
        return "<empty>"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "<binary %d bytes>" % len(raw)
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return "(raw) " + json.dumps(text)

out = ["### %s %s" % (n, label), "> %s %s" % (method, path)]
for h in [x for x in extra.split("\n") if x]:
    out.append("> header: %s" % h)
if sent_file == "-":
    out.append("> body: <none>")
else:
    out.append("> body: %s" % open(sent_file, "rb").read().decode("utf-8", "replace"))
out.append("< status: %s" % status)
ct, rid = None, False
for line in open(hdr_file, "rb").read().decode("latin-1").splitlines():
    k, _, v = line.partition(":")
    k = k.strip().lower()
    if k == "content-type":
        ct = v.strip()
    elif k in ("x-toxiproxy-request-id", "x-request-id"):
        rid = True
out.append("< content-type: %s" % (ct or "<none>"))
out.append("< request-id: %s" % ("yes" if rid else "no"))
out.append("< body: %s" % show(open(body_file, "rb").read()))
print(norm("\n".join(out)) + "\n")
PY

# probe LABEL METHOD PATH BODY [extra curl args...]
#   BODY "-" sends no body at all.
#   extra args may be -H 'Content-Type: x' or -A 'agent' to override the defaults.
probe() {
  local label="$1" method="$2" path="$3" body="$4"
  shift 4
  local ct="$DEFAULT_CT" ua="$UA" shown=""
  local args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -H) case "$2" in
            [Cc]ontent-[Tt]ype:*) ct="${2#*: }" ;;
            *) args+=(-H "$2") ;;
          esac
          shown+="$2"$'\n'; shift 2 ;;
      -A) ua="$2"; shown+="User-Agent: $2"$'\n'; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  N=$((N + 1))
  local hdr="$TMP/h" out="$TMP/b" sent="-"
  : >"$hdr"; : >"$out"
  local curl_args=(-s -S --max-time 5 -X "$method" -A "$ua" -D "$hdr" -o "$out" -w '%{http_code}')
  if [ "$body" != "-" ]; then
    sent="$TMP/sent"
    printf '%s' "$body" >"$sent"
    curl_args+=(-H "Content-Type: $ct" --data-binary "@$sent")
  fi
  local status
  status="$(curl "${curl_args[@]}" "${args[@]+"${args[@]}"}" "$URL$path" 2>"$TMP/err")" \
    || status="curl-error: $(tr '\n' ' ' <"$TMP/err")"
  cp "$out" "$TMP/last_body"
  "$PY" "$TMP/fmt.py" "$(printf '%02d' "$N")" "$label" "$method" "$path" "$shown" "$sent" \
    "$status" "$hdr" "$out"
}

# Silent request used only for set-up/clean-up.
quiet() {
  local a=(-s --max-time 5 -A "$UA" -o /dev/null -X "$1")
  if [ $# -ge 3 ]; then a+=(-H "Content-Type: application/json" --data-binary "$3"); fi
  curl "${a[@]}" "$URL$2" || true
}

# Field of the last probe's JSON body, e.g. last_field listen
last_field() {
  "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$TMP/last_body" "$1" 2>/dev/null
}

PROXIES="probe_en probe_a probe_ci probe_ct probe_d probe_lh probe_bf probe_p1 probe_p2 probe_p3 probe_pb1 probe_pb2"
cleanup() { for p in $PROXIES; do quiet DELETE "/proxies/$p"; done; }
cleanup

UP="127.0.0.1:9"   # never dialled: no connection is made through the probe proxies

echo "# probe_api.sh: Toxiproxy 2.12 compatibility probes (ports normalised to PORT)"
echo

# ---------------------------------------------------------------- basics
probe "version" GET /version -
probe "empty proxy list" GET /proxies -

# ---------------------------------------------------------------- proxy create bodies
probe "create: null body" POST /proxies 'null'
probe "create: no body" POST /proxies -
probe "create: empty object" POST /proxies '{}'
probe "create: missing upstream" POST /proxies '{"name":"probe_x"}'
probe "create: missing name" POST /proxies "{\"upstream\":\"$UP\"}"
probe "create: malformed JSON" POST /proxies '{"name":'
probe "create: JSON array" POST /proxies '[]'
probe "create: wrong type for name" POST /proxies "{\"name\":5,\"upstream\":\"$UP\"}"
probe "create: ok, with toxics key and unknown key ignored" POST /proxies \
  "{\"name\":\"probe_a\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\",\"toxics\":[{\"type\":\"latency\"}],\"bogus\":1}"
A_LISTEN="$(last_field listen)"
A_PORT="${A_LISTEN##*:}"
probe "create: duplicate name" POST /proxies "{\"name\":\"probe_a\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\"}"
probe "create: duplicate name with bad listen (409 before bind)" POST /proxies \
  "{\"name\":\"probe_a\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:$A_PORT\"}"
probe "create: case-insensitive keys" POST /proxies \
  "{\"NAME\":\"probe_ci\",\"UpStream\":\"$UP\",\"Listen\":\"127.0.0.1:0\",\"ENABLED\":true}"
probe "create: text/plain content type accepted" POST /proxies \
  "{\"name\":\"probe_ct\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\"}" -H 'Content-Type: text/plain'
probe "create: disabled keeps listen string" POST /proxies \
  "{\"name\":\"probe_d\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\",\"enabled\":false}"
LH_PORT="$(free_port)"
probe "create: localhost listen resolves to 127.0.0.1" POST /proxies \
  "{\"name\":\"probe_lh\",\"upstream\":\"$UP\",\"listen\":\"localhost:$LH_PORT\"}"
probe "create: bind failure (port in use)" POST /proxies \
  "{\"name\":\"probe_bf\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:$A_PORT\"}"
probe "create: bind failure left nothing" GET /proxies/probe_bf -

# ---------------------------------------------------------------- proxy read/update
probe "get proxy" GET /proxies/probe_a -
probe "get missing proxy" GET /proxies/probe_missing -
probe "get disabled proxy" GET /proxies/probe_d -
probe "update: disable (POST)" POST /proxies/probe_a '{"enabled":false}'
probe "update: enable (PATCH)" PATCH /proxies/probe_a '{"enabled":true}'
probe "update: empty object keeps values" POST /proxies/probe_a '{}'
probe "update: upstream only" POST /proxies/probe_a '{"upstream":"127.0.0.1:7"}'
probe "update: invalid port" POST /proxies/probe_a '{"listen":"127.0.0.1:99999"}'
probe "update: after invalid port" GET /proxies/probe_a -
probe "update: null body" POST /proxies/probe_a 'null'
probe "update: enabled as a string" POST /proxies/probe_a '{"enabled":"yes"}'
MOVE_PORT="$(free_port)"
probe "update: move listen to localhost:N" POST /proxies/probe_ct "{\"listen\":\"localhost:$MOVE_PORT\"}"
probe "update: listen of a disabled proxy" PATCH /proxies/probe_d '{"listen":"127.0.0.1:0"}'
probe "create: enabled null" POST /proxies "{\"name\":\"probe_en\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\",\"enabled\":null}"
quiet DELETE /proxies/probe_en
probe "update: malformed JSON" POST /proxies/probe_a '{"enabled":'
probe "update: missing proxy" POST /proxies/probe_missing '{"enabled":false}'

# ---------------------------------------------------------------- toxic creation check order
T=/proxies/probe_a/toxics
probe "toxic: first latency_downstream" POST $T '{"type":"latency","attributes":{"latency":10}}'
probe "toxic order: bad stream beats bad type, dup name, bad attrs" POST $T \
  '{"type":"nope","stream":"sideways","name":"latency_downstream","attributes":{"latency":"x"}}'
probe "toxic order: bad type beats dup name, bad attrs" POST $T \
  '{"type":"nope","stream":"upstream","name":"latency_downstream","attributes":{"latency":"x"}}'
probe "toxic order: dup name across streams beats bad attrs" POST $T \
  '{"type":"latency","stream":"upstream","name":"latency_downstream","attributes":{"latency":"x"}}'
probe "toxic order: bad attribute type" POST $T \
  '{"type":"latency","name":"t_badattr","attributes":{"latency":"x"}}'
probe "toxic: 1.5 for integer attribute" POST $T '{"type":"latency","name":"t_float","attributes":{"latency":1.5}}'
probe "toxic: 1e3 for integer attribute" POST $T '{"type":"latency","name":"t_exp","attributes":{"latency":1e3}}'
probe "toxic: string toxicity" POST $T '{"type":"latency","name":"t_strtox","toxicity":"1"}'
probe "toxic: missing type" POST $T '{"name":"t_notype"}'
probe "toxic: empty type" POST $T '{"type":"","name":"t_emptytype"}'
probe "toxic: duplicate name, same stream" POST $T '{"type":"latency","attributes":{"latency":1}}'
probe "toxic: empty stream and empty name" POST $T '{"type":"latency","name":"","stream":"","attributes":{"latency":1}}'
probe "toxic: null attributes" POST $T '{"type":"latency","name":"t_nullattr","stream":"upstream","attributes":null}'
probe "toxic: toxicity above 1" POST $T '{"type":"noop","name":"t_tox2","toxicity":2}'
probe "toxic: null body" POST $T 'null'
probe "toxic: malformed JSON" POST $T '{"type":'
probe "toxic: negative attribute numbers accepted" POST $T \
  '{"type":"latency","name":"t_neg","attributes":{"latency":-5,"jitter":-1}}'
probe "toxic: negative toxicity" POST $T '{"type":"noop","name":"t_negtox","toxicity":-0.5}'
probe "toxic: omitted attributes are 0" POST $T '{"type":"slicer","name":"t_slicer"}'
probe "toxic: noop has {}" POST $T '{"type":"noop","name":"t_noop","attributes":{"x":1}}'
probe "toxic: UpStream spelling kept" POST $T '{"type":"timeout","stream":"UpStream"}'
probe "toxic: DOWNSTREAM spelling, default name" POST $T '{"type":"limit_data","stream":"DOWNSTREAM","attributes":{"bytes":100}}'
probe "toxic: case-insensitive keys" POST $T '{"TYPE":"bandwidth","Name":"t_ci","STREAM":"upstream","Attributes":{"RATE":5}}'
probe "toxic: unknown attribute ignored" POST $T '{"type":"slow_close","name":"t_unk","attributes":{"delay":5,"bogus":1}}'
probe "toxic: each type with defaults (reset_peer)" POST $T '{"type":"reset_peer","name":"t_rp"}'
probe "toxic: toxicity 0.25 and text/plain" POST $T '{"type":"latency","name":"t_tox","stream":"upstream","toxicity":0.25}' \
  -H 'Content-Type: text/plain'
probe "toxic: on missing proxy" POST /proxies/probe_missing/toxics '{"type":"latency"}'
probe "toxic list: upstream first, creation order" GET $T -
probe "toxic get" GET $T/latency_downstream -
probe "toxic get missing" GET $T/t_missing -
probe "toxic list of missing proxy" GET /proxies/probe_missing/toxics -
probe "proxy shows toxics" GET /proxies/probe_a -

# ---------------------------------------------------------------- toxic update/delete
probe "toxic update: attributes merged (POST)" POST $T/latency_downstream '{"attributes":{"jitter":3}}'
probe "toxic update: toxicity replaced (PATCH)" PATCH $T/latency_downstream '{"toxicity":0.5}'
probe "toxic update: empty object" POST $T/latency_downstream '{}'
probe "toxic update: 1.5 for integer" POST $T/latency_downstream '{"attributes":{"latency":1.5}}'
probe "toxic update: string toxicity" POST $T/latency_downstream '{"toxicity":"1"}'
probe "toxic update: name/type/stream in body" POST $T/latency_downstream \
  '{"name":"renamed","type":"noop","stream":"upstream","attributes":{"latency":20}}'
probe "toxic update: after" GET $T/latency_downstream -
probe "toxic update: null body" POST $T/latency_downstream 'null'
probe "toxic update: missing toxic" POST $T/t_missing '{"toxicity":1}'
probe "toxic delete" DELETE $T/t_noop -
probe "toxic delete again" DELETE $T/t_noop -

# ---------------------------------------------------------------- populate
probe "populate: []" POST /populate '[]'
probe "populate: object instead of array" POST /populate "{\"name\":\"probe_p1\",\"upstream\":\"$UP\"}"
probe "populate: null" POST /populate 'null'
probe "populate: malformed JSON" POST /populate '[{'
probe "populate: missing upstream at proxy 2" POST /populate \
  "[{\"name\":\"probe_p1\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\"},{\"name\":\"probe_p2\",\"listen\":\"127.0.0.1:0\"}]"
probe "populate: missing name at proxy 1" POST /populate "[{\"upstream\":\"$UP\"}]"
probe "populate: nothing created by invalid batch" GET /proxies/probe_p1 -
probe "populate: create two" POST /populate \
  "[{\"name\":\"probe_p1\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\"},{\"name\":\"probe_p2\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\"}]"
quiet POST /proxies/probe_p1/toxics '{"type":"latency","name":"keep"}'
quiet POST /proxies/probe_p2/toxics '{"type":"latency","name":"drop"}'
curl -s --max-time 5 -A "$UA" -o "$TMP/p1" "$URL/proxies/probe_p1"
P1_LISTEN="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["listen"])' "$TMP/p1" 2>/dev/null)"
probe "populate: identical kept (toxic stays), different replaced, new added" POST /populate \
  "[{\"name\":\"probe_p1\",\"upstream\":\"$UP\",\"listen\":\"$P1_LISTEN\"},{\"name\":\"probe_p2\",\"upstream\":\"127.0.0.1:7\",\"listen\":\"127.0.0.1:0\"},{\"name\":\"probe_p3\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\",\"enabled\":false}]"
probe "populate: identical proxy kept its toxic" GET /proxies/probe_p1/toxics -
probe "populate: replaced proxy lost its toxic" GET /proxies/probe_p2/toxics -
probe "populate: bind failure on entry 2" POST /populate \
  "[{\"name\":\"probe_pb1\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:0\"},{\"name\":\"probe_pb2\",\"upstream\":\"$UP\",\"listen\":\"127.0.0.1:$A_PORT\"}]"
probe "populate: entry 1 stays after bind failure" GET /proxies/probe_pb1 -
probe "populate: entry 2 absent after bind failure" GET /proxies/probe_pb2 -

probe "list of several proxies" GET /proxies -

# ---------------------------------------------------------------- reset
quiet POST /proxies/probe_a '{"enabled":false}'
probe "reset" POST /reset -
probe "reset: created-disabled proxy now enabled" GET /proxies/probe_d -
probe "reset: toxics gone" GET /proxies/probe_a/toxics -
probe "reset: with a body" POST /reset '{"x":1}'

# ---------------------------------------------------------------- rejections
probe "browser User-Agent is rejected" GET /proxies - -A 'Mozilla/5.0 (X11; Linux x86_64)'
probe "browser User-Agent on POST" POST /reset - -A 'Mozilla/5.0'
probe "lower-case mozilla UA" GET /version - -A 'mozilla/5.0'
probe "unknown route" GET /nope -
probe "unknown nested route" GET /proxies/probe_a/toxics/x/y -
probe "trailing slash" GET /proxies/ -
probe "wrong method on /proxies" PUT /proxies '{}'
probe "wrong method on /proxies (DELETE)" DELETE /proxies -
probe "wrong method on /version" POST /version -
probe "wrong method on /reset" GET /reset -
probe "wrong method on /populate" GET /populate -
probe "wrong method on proxy" PUT /proxies/probe_a '{}'
probe "wrong method on toxics" DELETE /proxies/probe_a/toxics -
probe "wrong method on toxic" PUT /proxies/probe_a/toxics/x '{}'

# ---------------------------------------------------------------- delete
probe "delete proxy" DELETE /proxies/probe_a -
probe "delete proxy again" DELETE /proxies/probe_a -
probe "get deleted proxy" GET /proxies/probe_a -
probe "toxic on deleted proxy" GET /proxies/probe_a/toxics/latency_downstream -

cleanup
probe "final proxy list" GET /proxies -
