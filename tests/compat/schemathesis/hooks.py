"""Schemathesis hooks for fuzzing fallacy's admin API (tests/api_fuzz.rs).

Loaded with SCHEMATHESIS_HOOKS=<this file>. Two jobs:

1. Keep every generated request on loopback. A proxy's `listen` is resolved and bound by
   fallacy when the proxy is created, updated, enabled or reset, so a generated
   "evil.example:80" would be a DNS query and "0.0.0.0:22" a bind beyond loopback. Right before
   each request is sent (`before_call`, which every phase goes through), every `listen` string
   anywhere in the body becomes 127.0.0.1:0, or, for about one in six, FALLACY_FUZZ_BUSY_LISTEN
   (a loopback port that is already taken), so the documented bind failure is exercised too.
   Every `upstream` string and every string in an `upstreams` list becomes
   FALLACY_FUZZ_UPSTREAM (a closed loopback port): no admin operation dials an upstream by
   itself, and if one ever did, it would stay on loopback. Keys are matched ignoring case, as
   fallacy does. Non-string values are left as generated (fallacy refuses them with a 400
   without resolving anything), and so is "" (fallacy's default, 127.0.0.1:0). Two nudges keep
   a run from stalling on what Hypothesis draws most: one in five created proxies without a
   `listen` gets the taken address (so the bind failure is met in every run), and a proxy name
   used twice already gets a numbered suffix (so creates go on succeeding after the first 409).

2. `not_a_server_error_but_bind`, which replaces schemathesis's `not_a_server_error`: a 5xx
   fails the run unless it is the documented bind failure, a 500 whose JSON body is
   {"error": "listen ...", "status": 500}, answered by an operation that binds: POST /proxies,
   POST /populate, POST /reset (re-enables disabled proxies), or a proxy update (POST or PATCH
   /proxies/{proxy}) whose body sets `listen` or `enabled`. `listens_on_loopback` checks every
   proxy fallacy answers with listens on 127.0.0.1, so a hole in (1) shows up as a failure.
"""

import json
import os
import zlib

import schemathesis

BUSY_LISTEN = os.environ.get("FALLACY_FUZZ_BUSY_LISTEN", "127.0.0.1:0")
UPSTREAM = os.environ.get("FALLACY_FUZZ_UPSTREAM", "127.0.0.1:9")

if not BUSY_LISTEN.startswith("127.0.0.1:") or not UPSTREAM.startswith("127.0.0.1:"):
    raise RuntimeError("FALLACY_FUZZ_BUSY_LISTEN and FALLACY_FUZZ_UPSTREAM must be 127.0.0.1:PORT")


def safe_listen(generated):
    """A loopback listen address, chosen from the generated string so that a seed replays."""
    if generated in ("", "127.0.0.1:0", BUSY_LISTEN):
        # The default, or already chosen here (sanitize is applied to its own output).
        return generated
    if zlib.crc32(generated.encode("utf-8", "surrogatepass")) % 6 == 0:
        return BUSY_LISTEN
    return "127.0.0.1:0"


def sanitize(value):
    """`value` with every listen/upstream/upstreams string, at any depth, on loopback."""
    if isinstance(value, list):
        return [sanitize(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        name = key.lower() if isinstance(key, str) else key
        if name == "listen" and isinstance(v, str):
            out[key] = safe_listen(v)
        elif name == "upstream" and isinstance(v, str):
            out[key] = UPSTREAM
        elif name == "upstreams" and isinstance(v, str):
            out[key] = UPSTREAM
        elif name == "upstreams" and isinstance(v, list):
            out[key] = [UPSTREAM if isinstance(u, str) else sanitize(u) for u in v]
        else:
            out[key] = sanitize(v)
    return out


def decoded(body):
    """The first JSON value of a raw body, as fallacy reads it (None when it is not JSON)."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        value, _ = json.JSONDecoder().raw_decode(body.lstrip())
    except ValueError:
        return None
    return value


CREATED_NAMES = {}


def fresh_name(body):
    """Hypothesis draws the same few names ("0", "A") again and again, so after the first 409 a
    POST /proxies would never create anything more, and the stateful phase would never reach
    the toxics of a new proxy. A name's third and later uses get a numbered suffix."""
    for key, name in body.items():
        if isinstance(key, str) and key.lower() == "name" and isinstance(name, str) and name:
            uses = CREATED_NAMES.get(name, 0) + 1
            CREATED_NAMES[name] = uses
            if uses > 2:
                body[key] = f"{name}-{uses}"
            return


def sometimes_busy(body):
    """Generated proxies mostly leave `listen` out; one in five of those gets the taken address,
    so that the bind failure is met in every run, not only when a listen string is drawn."""
    if not isinstance(body, dict) or any(isinstance(k, str) and k.lower() == "listen" for k in body):
        return
    if zlib.crc32(json.dumps(body, sort_keys=True, default=repr).encode()) % 5 == 0:
        body["listen"] = BUSY_LISTEN


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() == "POST" and case.operation.path == "/proxies" and isinstance(case.body, dict):
        fresh_name(case.body)
        sometimes_busy(case.body)
    if case.method.upper() == "POST" and case.operation.path == "/populate" and isinstance(case.body, list):
        for item in case.body:
            sometimes_busy(item)
    body = case.body
    if isinstance(body, (bytes, bytearray, str)):
        # A raw body (a content-type probe, say): fallacy would still read it as JSON.
        value = decoded(body)
        if isinstance(value, (dict, list)) and sanitize(value) != value:
            case.body = json.dumps(sanitize(value))
        return
    if isinstance(body, (dict, list)):
        clean = sanitize(body)
        if clean != body:
            case.body = clean


def lowered_keys(body):
    if isinstance(body, (bytes, bytearray, str)):
        body = decoded(body)
    if isinstance(body, dict):
        return {k.lower() for k in body if isinstance(k, str)}
    return set()


def may_bind(case):
    method = case.method.upper()
    path = case.operation.path
    if method == "POST" and path in ("/proxies", "/populate", "/reset"):
        return True
    if method in ("POST", "PATCH") and path == "/proxies/{proxy}":
        return bool(lowered_keys(case.body) & {"listen", "enabled"})
    return False


@schemathesis.check
def not_a_server_error_but_bind(ctx, response, case):
    """No 5xx, except the documented 500 for a listen address that cannot be bound."""
    if response.status_code < 500:
        return None
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    bind_failure = (
        response.status_code == 500
        and isinstance(body, dict)
        and body.get("status") == 500
        and isinstance(body.get("error"), str)
        and body["error"].startswith("listen ")
    )
    if bind_failure and may_bind(case):
        return None
    raise AssertionError(
        f"server error {response.status_code} on {case.method.upper()} {case.operation.path}"
        f" (only a bind failure may be a 500): {response.text[:500]}"
    )


def proxies_in(path, method, body):
    """The proxy objects in a successful answer."""
    if not isinstance(body, (dict, list)):
        return []
    if path == "/proxies" and method == "GET" and isinstance(body, dict):
        return [p for p in body.values() if isinstance(p, dict)]
    if path == "/populate" and isinstance(body, dict):
        return [p for p in body.get("proxies") or [] if isinstance(p, dict)]
    if path in ("/proxies", "/proxies/{proxy}") and isinstance(body, dict):
        return [body]
    return []


@schemathesis.check
def listens_on_loopback(ctx, response, case):
    """Every proxy fallacy shows listens on 127.0.0.1: the hooks above kept it there."""
    if not 200 <= response.status_code < 300:
        return None
    try:
        body = json.loads(response.text)
    except ValueError:
        return None
    for proxy in proxies_in(case.operation.path, case.method.upper(), body):
        listen = proxy.get("listen")
        if isinstance(listen, str) and not listen.startswith("127.0.0.1:"):
            raise AssertionError(f"a proxy listens beyond loopback: {proxy}")
    return None
