#!/usr/bin/env python3
"""Drive a Toxiproxy-compatible admin API with the real PyPI client `toxiproxy-python`.

Usage:
    pip install toxiproxy-python
    python3 tests/compat/toxiproxy_python_workflow.py http://127.0.0.1:PORT

Exits 0 when every check passes; otherwise prints "FAIL: <what>" and exits 1
(exit 2 for bad usage or a missing client, exit 3 when the 30 s deadline is hit).

Everything stays on loopback with ephemeral ports: an echo server is started inside
this script on 127.0.0.1:0 and every proxy listens on 127.0.0.1:0. Every socket has a
timeout and a watchdog ends the run after 30 s.

Notes on the client (toxiproxy-python 0.1.1), read from its source:
  * Toxiproxy().proxies() / get_proxy() / create() / destroy() / populate() / reset()
    / version() / running(); Proxy.add_toxic(**kw) / toxics() / get_toxic() /
    destroy_toxic() / disable() / enable() / down() (context manager) / destroy().
  * It has no call to update a toxic, so updates go through the client's own
    low-level `APIConsumer.post` (which still maps 400/404/409 to its exceptions).
  * Its populate() is client-side (compare, destroy, create); the server's
    POST /populate is exercised separately through `APIConsumer.post`.
  * HTTP status mapping: 404 -> NotFound, 409 -> ProxyExists, 400 -> InvalidToxic.
"""

import json
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from urllib.parse import urlparse

DEADLINE_S = 30.0
SOCK_TIMEOUT_S = 5.0

# Never let an HTTP proxy from the environment get between us and loopback.
for _k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_k, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"

# The client calls `requests` without a timeout: the default socket timeout covers it.
socket.setdefaulttimeout(SOCK_TIMEOUT_S)

try:
    from toxiproxy import Toxiproxy, Proxy
    from toxiproxy.api import APIConsumer
    from toxiproxy.exceptions import NotFound, ProxyExists, InvalidToxic
except ImportError as e:  # pragma: no cover
    print("FAIL: toxiproxy-python is not installed (pip install toxiproxy-python): %s" % e)
    sys.exit(2)


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


STEP = ["start"]


def step(name):
    STEP[0] = name
    print("-- %s" % name, flush=True)


def watchdog():
    time.sleep(DEADLINE_S)
    print("FAIL: deadline of %.0f s exceeded during step: %s" % (DEADLINE_S, STEP[0]), flush=True)
    os._exit(3)


# --------------------------------------------------------------------------- echo server

class EchoServer(object):
    """A small threaded TCP echo server on 127.0.0.1:0 that stops by itself."""

    def __init__(self):
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)
        self.thread.start()

    def _accept_loop(self):
        deadline = time.monotonic() + DEADLINE_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        try:
            self.sock.close()
        except OSError:
            pass

    def _serve(self, conn):
        conn.settimeout(0.5)
        deadline = time.monotonic() + DEADLINE_S
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(2)


# --------------------------------------------------------------------------- TCP helpers

def host_port(listen):
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def round_trip_on(sock, payload):
    t0 = time.monotonic()
    sock.sendall(payload)
    got = recv_exact(sock, len(payload))
    elapsed = time.monotonic() - t0
    check(got == payload, "echo through proxy returned %r, expected %r" % (got[:60], payload[:60]))
    return elapsed


def round_trip(listen, payload=None):
    """Fresh connection, one echo round trip; returns seconds from send to full echo."""
    payload = payload or ("ping-%s" % uuid.uuid4().hex).encode()
    with socket.create_connection(host_port(listen), timeout=SOCK_TIMEOUT_S) as s:
        s.settimeout(SOCK_TIMEOUT_S)
        return round_trip_on(s, payload)


def expect_delay(listen, low, high, what, samples=2):
    for _ in range(samples):
        t = round_trip(listen)
        check(low <= t <= high, "%s: round trip took %.3f s, expected between %.3f and %.3f s"
              % (what, t, low, high))
    print("   %s: ok (last %.3f s)" % (what, t))


def expect_fast(listen, what, limit=0.15, samples=3):
    best = min(round_trip(listen) for _ in range(samples))
    check(best < limit, "%s: fastest round trip took %.3f s, expected < %.3f s" % (what, best, limit))
    print("   %s: ok (%.3f s)" % (what, best))


def expect_refused(listen, what):
    try:
        with socket.create_connection(host_port(listen), timeout=SOCK_TIMEOUT_S) as s:
            # Some stacks accept then reset: a refused proxy must not echo.
            s.settimeout(1.0)
            try:
                s.sendall(b"x")
                got = s.recv(1)
            except (ConnectionError, socket.timeout, OSError):
                got = b""
            check(got == b"", "%s: connection to %s was accepted and echoed" % (what, listen))
            raise CheckFailed("%s: connection to %s was accepted, expected refused" % (what, listen))
    except ConnectionRefusedError:
        print("   %s: connection refused as expected" % what)


def expect_raises(exc, fn, what):
    try:
        fn()
    except exc:
        print("   %s: raised %s as expected" % (what, exc.__name__))
        return
    except Exception as e:  # wrong exception type
        raise CheckFailed("%s: expected %s, got %s: %s" % (what, exc.__name__, type(e).__name__, e))
    raise CheckFailed("%s: expected %s, nothing raised" % (what, exc.__name__))


# --------------------------------------------------------------------------- workflow

def run(admin_url):
    u = urlparse(admin_url)
    check(u.scheme == "http" and u.hostname and u.port,
          "admin URL must look like http://127.0.0.1:PORT, got %r" % admin_url)

    client = Toxiproxy()
    client.update_api_consumer(u.hostname, u.port)
    tag = uuid.uuid4().hex[:8]
    name1 = "compat_echo_%s" % tag
    name2 = "compat_second_%s" % tag
    name3 = "compat_third_%s" % tag
    ours = [name1, name2, name3]

    echo = EchoServer()
    try:
        step("server reachable and version")
        check(client.running() is True, "client.running() is not True for %s" % admin_url)
        raw = client.version()
        check(raw is not None, "client.version() returned None")
        ver = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        check(isinstance(ver, dict) and isinstance(ver.get("version"), str) and ver["version"],
              "GET /version body is not {\"version\": \"...\"}: %r" % raw)
        print("   version: %s" % ver["version"])
        for n in ours:
            check(client.get_proxy(n) is None, "proxy %s already exists before the test" % n)

        step("create a proxy on 127.0.0.1:0")
        p = client.create(upstream=echo.addr, name=name1, listen="127.0.0.1:0")
        check(isinstance(p, Proxy), "create() did not return a Proxy")
        check(p.name == name1, "created proxy name %r" % p.name)
        check(p.upstream == echo.addr, "created proxy upstream %r, expected %r" % (p.upstream, echo.addr))
        check(p.enabled is True, "created proxy enabled=%r, expected True" % p.enabled)
        host, port = host_port(p.listen)
        check(host == "127.0.0.1" and port != 0,
              "created proxy listen %r is not a real 127.0.0.1 port" % p.listen)
        listing = client.proxies()
        check(name1 in listing, "proxy %s missing from client.proxies(): %r" % (name1, sorted(listing)))
        lp = listing[name1]
        check(lp.listen == p.listen, "listing listen %r != create listen %r" % (lp.listen, p.listen))
        check(lp.upstream == echo.addr and lp.enabled is True,
              "listing shows upstream=%r enabled=%r" % (lp.upstream, lp.enabled))
        got = client.get_proxy(name1)
        check(got is not None and got.listen == p.listen, "get_proxy(%s) -> %r" % (name1, got))
        check(p.toxics() == {}, "new proxy has toxics: %r" % p.toxics())
        listen = p.listen

        step("duplicate create")
        expect_raises(ProxyExists, lambda: client.create(upstream=echo.addr, name=name1),
                      "client.create() of an existing name")
        expect_raises(ProxyExists,
                      lambda: APIConsumer.post("/proxies", json={"name": name1, "upstream": echo.addr,
                                                                 "listen": "127.0.0.1:0"}),
                      "server-side 409 on duplicate POST /proxies")

        step("echo through the proxy")
        payload = b"hello through fallacy \x00\xff" * 50
        with socket.create_connection(host_port(listen), timeout=SOCK_TIMEOUT_S) as s:
            s.settimeout(SOCK_TIMEOUT_S)
            round_trip_on(s, payload)
            round_trip_on(s, b"second message on the same connection")
        expect_fast(listen, "baseline without toxics", limit=0.15)

        # A connection opened before any toxic: toxic changes must reach it too.
        live = socket.create_connection(host_port(listen), timeout=SOCK_TIMEOUT_S)
        live.settimeout(SOCK_TIMEOUT_S)
        round_trip_on(live, b"live-before")

        step("latency 200 ms downstream (add_toxic with every keyword)")
        r = p.add_toxic(name="lag", type="latency", stream="downstream", toxicity=1.0,
                        attributes={"latency": 200, "jitter": 0})
        check(r is None, "add_toxic returned %r (client returns None)" % (r,))
        toxics = p.toxics()
        check(set(toxics) == {"lag"}, "toxics after add: %r" % sorted(toxics))
        t = toxics["lag"]
        check(t.type == "latency" and t.stream == "downstream" and float(t.toxicity) == 1.0,
              "toxic lag is type=%r stream=%r toxicity=%r" % (t.type, t.stream, t.toxicity))
        check(t.attributes.get("latency") == 200 and t.attributes.get("jitter") == 0,
              "toxic lag attributes %r" % t.attributes)
        gt = p.get_toxic("lag")
        check(gt is not None and gt.name == "lag", "get_toxic('lag') -> %r" % gt)
        check(p.get_toxic("nope") is None, "get_toxic('nope') is not None")
        expect_delay(listen, 0.19, 0.20 + 0.60, "new connection with 200 ms")
        d = round_trip_on(live, b"live-200")
        check(0.19 <= d <= 0.80, "already-open connection with 200 ms took %.3f s" % d)
        print("   already-open connection with 200 ms: ok (%.3f s)" % d)

        step("update latency to 400 ms (client's APIConsumer.post, no update call in client)")
        resp = APIConsumer.post("/proxies/%s/toxics/lag" % name1, json={"attributes": {"latency": 400}})
        check(resp.status_code == 200, "toxic update status %d" % resp.status_code)
        body = resp.json()
        check(body.get("attributes", {}).get("latency") == 400, "update answer %r" % body)
        check(body.get("attributes", {}).get("jitter") == 0, "update lost jitter: %r" % body)
        check(float(body.get("toxicity")) == 1.0, "update changed toxicity: %r" % body)
        check(p.get_toxic("lag").attributes.get("latency") == 400, "listing after update not 400")
        expect_delay(listen, 0.39, 0.40 + 0.60, "new connection with 400 ms")
        d = round_trip_on(live, b"live-400")
        check(0.39 <= d <= 1.0, "already-open connection with 400 ms took %.3f s" % d)
        print("   already-open connection with 400 ms: ok (%.3f s)" % d)

        step("update toxicity to 0 (toxic no longer applies to new connections)")
        resp = APIConsumer.post("/proxies/%s/toxics/lag" % name1, json={"toxicity": 0.0})
        body = resp.json()
        check(float(body.get("toxicity")) == 0.0 and body["attributes"].get("latency") == 400,
              "toxicity update answer %r" % body)
        expect_fast(listen, "new connection with toxicity 0", limit=0.15)
        resp = APIConsumer.post("/proxies/%s/toxics/lag" % name1, json={"toxicity": 1.0})
        check(float(resp.json().get("toxicity")) == 1.0, "toxicity back to 1: %r" % resp.json())
        expect_delay(listen, 0.39, 1.0, "new connection with toxicity back to 1", samples=1)

        step("remove the latency toxic")
        check(p.destroy_toxic("lag") is True, "destroy_toxic('lag') is not True")
        check(p.toxics() == {}, "toxics after removal: %r" % sorted(p.toxics()))
        expect_fast(listen, "new connection after removal", limit=0.15)
        d = round_trip_on(live, b"live-after")
        check(d < 0.3, "already-open connection after removal took %.3f s" % d)
        print("   already-open connection after removal: ok (%.3f s)" % d)
        live.close()
        expect_raises(NotFound, lambda: p.destroy_toxic("lag"), "destroy_toxic of a removed toxic")

        step("add_toxic with defaults only (name <type>_<stream>, stream downstream)")
        p.add_toxic(type="latency", attributes={"latency": 200})
        toxics = p.toxics()
        check(set(toxics) == {"latency_downstream"}, "default-named toxic: %r" % sorted(toxics))
        t = toxics["latency_downstream"]
        check(t.stream == "downstream" and float(t.toxicity) == 1.0 and t.attributes.get("latency") == 200,
              "default toxic stream=%r toxicity=%r attrs=%r" % (t.stream, t.toxicity, t.attributes))
        expect_delay(listen, 0.19, 0.80, "default-named 200 ms downstream", samples=1)

        step("second toxic on the upstream stream")
        p.add_toxic(type="latency", stream="upstream", attributes={"latency": 150})
        raw_list = APIConsumer.get("/proxies/%s/toxics" % name1).json()
        names = [x["name"] for x in raw_list]
        check(names == ["latency_upstream", "latency_downstream"],
              "toxic list order %r, expected upstream first then downstream" % names)
        t = p.get_toxic("latency_upstream")
        check(t is not None and t.stream == "upstream" and t.attributes.get("latency") == 150,
              "upstream toxic %r" % (t and t.__dict__))
        expect_delay(listen, 0.34, 0.35 + 0.70, "200 ms down + 150 ms up", samples=1)
        expect_raises(ProxyExists,
                      lambda: p.add_toxic(name="latency_upstream", type="latency", stream="downstream",
                                          attributes={"latency": 1}),
                      "toxic name duplicated across streams")
        expect_raises(InvalidToxic, lambda: p.add_toxic(type="no_such_toxic"), "unknown toxic type")
        expect_raises(InvalidToxic, lambda: p.add_toxic(type="latency", stream="sideways"),
                      "bad stream")
        check(p.destroy_toxic("latency_upstream") is True, "destroy_toxic('latency_upstream') not True")
        expect_delay(listen, 0.19, 0.80, "upstream toxic removed, 200 ms down remains", samples=1)
        check(p.destroy_toxic("latency_downstream") is True, "destroy_toxic('latency_downstream') not True")
        check(p.toxics() == {}, "toxics left: %r" % sorted(p.toxics()))
        expect_fast(listen, "all toxics removed", limit=0.15)

        step("disable and enable")
        p.disable()
        check(p.enabled is False, "Proxy.enabled not updated by disable()")
        lp = client.get_proxy(name1)
        check(lp.enabled is False, "listing shows enabled=%r after disable" % lp.enabled)
        expect_refused(listen, "disabled proxy")
        p.enable()
        lp = client.get_proxy(name1)
        check(lp.enabled is True, "listing shows enabled=%r after enable" % lp.enabled)
        check(lp.listen == listen, "listen changed across disable/enable: %r -> %r" % (listen, lp.listen))
        expect_fast(listen, "re-enabled proxy echoes", limit=0.3)
        with p.down():
            expect_refused(listen, "inside Proxy.down()")
        check(client.get_proxy(name1).enabled is True, "not enabled after leaving Proxy.down()")
        round_trip(listen)
        print("   after Proxy.down(): echo ok")

        step("populate (client-side) with an unchanged existing proxy and a new one")
        p.add_toxic(name="keepme", type="latency", attributes={"latency": 100})
        created = client.populate([
            {"name": name1, "upstream": echo.addr, "listen": listen},
            {"name": name2, "upstream": echo.addr, "listen": "127.0.0.1:0"},
        ])
        check([x.name for x in created] == [name2],
              "populate created %r, expected only %s" % ([x.name for x in created], name2))
        listing = client.proxies()
        check(name1 in listing and name2 in listing, "after populate: %r" % sorted(listing))
        check(listing[name1].listen == listen, "existing proxy listen changed to %r" % listing[name1].listen)
        check("keepme" in p.toxics(), "populate dropped the toxic of the unchanged proxy")
        listen2 = listing[name2].listen
        check(host_port(listen2)[1] != 0, "populated proxy listen %r" % listen2)
        round_trip(listen2)
        print("   populated proxy echoes")

        step("server-side POST /populate through APIConsumer")
        resp = APIConsumer.post("/populate", json=[
            {"name": name1, "upstream": echo.addr, "listen": listen},
            {"name": name3, "upstream": echo.addr, "listen": "127.0.0.1:0"},
        ])
        check(resp.status_code == 201, "POST /populate status %d" % resp.status_code)
        body = resp.json()
        check(isinstance(body.get("proxies"), list) and
              sorted(x["name"] for x in body["proxies"]) == sorted([name1, name3]),
              "POST /populate answer %r" % body)
        check("keepme" in p.toxics(), "POST /populate replaced the identical proxy (toxic lost)")
        p3 = client.get_proxy(name3)
        check(p3 is not None and host_port(p3.listen)[1] != 0, "populated %s: %r" % (name3, p3))
        round_trip(p3.listen)
        print("   server-populated proxy echoes")
        expect_raises(InvalidToxic, lambda: APIConsumer.post("/populate", json=[
            {"name": "compat_bad_%s" % tag, "upstream": echo.addr, "listen": "127.0.0.1:0"},
            {"name": "compat_bad2_%s" % tag, "listen": "127.0.0.1:0"},
        ]), "POST /populate with a missing upstream (400)")
        check(client.get_proxy("compat_bad_%s" % tag) is None, "invalid populate created entry 1")

        step("reset")
        p2 = client.get_proxy(name2)
        p2.add_toxic(type="latency", stream="upstream", attributes={"latency": 300})
        p2.disable()
        expect_refused(listen2, "second proxy disabled before reset")
        check(client.reset() is True, "client.reset() is not True")
        for n in (name1, name2, name3):
            x = client.get_proxy(n)
            check(x is not None and x.enabled is True, "after reset %s enabled=%r" % (n, x and x.enabled))
            check(x.toxics() == {}, "after reset %s toxics %r" % (n, sorted(x.toxics())))
        expect_fast(listen, "first proxy after reset", limit=0.15)
        expect_fast(listen2, "second proxy after reset", limit=0.3)

        step("destroy and 404s")
        check(client.destroy(p) is True, "client.destroy(p) is not True")
        check(client.destroy("not a Proxy") is False, "client.destroy(non-Proxy) is not False")
        check(client.get_proxy(name1) is None, "destroyed proxy still listed")
        expect_refused(listen, "destroyed proxy")
        expect_raises(NotFound, lambda: APIConsumer.get("/proxies/%s" % name1), "GET missing proxy")
        expect_raises(NotFound, p.toxics, "toxics() of a destroyed proxy")
        expect_raises(NotFound, p.destroy, "destroy() twice")
        expect_raises(NotFound, p.disable, "disable() of a destroyed proxy")
        expect_raises(NotFound, lambda: p.add_toxic(type="latency"), "add_toxic on a destroyed proxy")
        p2 = client.get_proxy(name2)
        expect_raises(NotFound, lambda: APIConsumer.get("/proxies/%s/toxics/none" % name2),
                      "GET missing toxic")
        expect_raises(NotFound, lambda: p2.destroy_toxic("none"), "destroy_toxic of a missing toxic")
        check(p2.destroy() is True, "destroy second proxy")
        check(client.destroy(client.get_proxy(name3)) is True, "destroy third proxy")
        left = [n for n in client.proxies() if n in ours]
        check(left == [], "proxies left behind: %r" % left)
    finally:
        # Best-effort cleanup of anything this run created.
        for n in ours:
            try:
                APIConsumer.delete("/proxies/%s" % n)
            except Exception:
                pass
        echo.close()


def main():
    if len(sys.argv) != 2:
        print("usage: %s http://127.0.0.1:PORT" % sys.argv[0])
        return 2
    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.monotonic()
    try:
        run(sys.argv[1])
    except CheckFailed as e:
        print("FAIL: [%s] %s" % (STEP[0], e), flush=True)
        return 1
    except Exception as e:
        traceback.print_exc()
        print("FAIL: [%s] unexpected %s: %s" % (STEP[0], type(e).__name__, e), flush=True)
        return 1
    print("PASS: toxiproxy-python workflow against %s in %.1f s" % (sys.argv[1], time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
