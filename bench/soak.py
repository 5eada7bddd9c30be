#!/usr/bin/env python3
"""bench/soak: fallacy under load over TCP and HTTP while toxics, partitions and proxies are
added and removed at random (seeded), for a long time. See bench/README.md, "Soak: bench/soak".

What it proves, and how:
- No byte is lost, changed or reordered under non-destructive faults: every byte sent through
  the two checksum proxies (`soak_tcp` to an echo server, `soak_http` to an HTTP echo) is
  compared with what comes back, byte for byte, and each TCP connection's SHA-256 of what it
  sent is compared with that of what it received; every HTTP response body is compared with
  the request's, and the upstream's SHA-256 of the body it got with the client's.
- The admin API answers every call within --admin-limit-ms (100 ms), including toxic removal
  while --busy connections (1,000) are open and a few stalled ones have bytes in flight.
- RSS, file descriptors and tokio tasks stay flat: measured at quiet points (churn stopped,
  every fault removed, load paused, the busy pool still open) after the warm-up and at the end,
  and after everything is closed against the idle figures taken before any load.

Three processes besides fallacy, all started here and stopped by PID (and killed by the
kernel if this one dies: PR_SET_PDEATHSIG):
- this one, the controller: starts everything, drives the admin API (synchronously, so each
  call's time is the API's, not an event loop's), samples /metrics and /proc, writes the report;
- `soak.py _upstreams`: an asyncio echo server and an HTTP/1.1 echo server (niced +5);
- `soak.py _load CONFIG`: the asyncio clients (niced +5), driven by JSON lines on stdin.
"""

import argparse
import asyncio
import ctypes
import hashlib
import http.client
import json
import os
import queue
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

STALL = 30.0  # seconds a connection with bytes outstanding may go without progress


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pctl(values, q):
    """The q-quantile (0..1) of values, nearest rank."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


# =============================================================================================
# Child processes: the upstreams and the load, driven by JSON lines
# =============================================================================================


def _child_setup(nice):
    def setup():
        try:  # die with the controller, even when it is SIGKILLed
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if nice:
            os.nice(nice)
    return setup


class Child:
    """A child process answering one JSON line on stdout for each command on stdin."""

    def __init__(self, name, argv, nice, stderr):
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, preexec_fn=_child_setup(nice),
                                     start_new_session=True, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.lines = queue.Queue()
        self.seq = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def hello(self, timeout=15):
        return self._next(timeout)

    def _next(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no answer within {timeout} s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited (status {self.proc.poll()})")
        return json.loads(line)

    def call(self, cmd, timeout=60, **kw):
        self.seq += 1
        msg = dict(kw, cmd=cmd, id=self.seq)
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise RuntimeError(f"{self.name}: {cmd}: {e}") from None
        deadline = time.monotonic() + timeout
        while True:
            ans = self._next(max(0.1, deadline - time.monotonic()))
            if ans.get("id") == self.seq:
                if "error" in ans:
                    raise RuntimeError(f"{self.name}: {cmd}: {ans['error']}")
                return ans

    def stop(self):
        stop_pid(self.proc)


def stop_pid(proc, grace=5.0):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except OSError:
        pass


async def _command_loop(handler):
    """Reads JSON commands on stdin, answers each with handler's dict (plus its id)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def one(msg):
        try:
            ans = await handler(msg)
        except Exception as e:  # noqa: BLE001  (reported to the controller)
            ans = {"error": f"{type(e).__name__}: {e}"}
        ans["id"] = msg.get("id")
        send(ans)

    tasks = set()
    while True:
        line = await reader.readline()
        if not line:
            return
        msg = json.loads(line)
        if msg["cmd"] == "exit":
            return
        t = asyncio.ensure_future(one(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


# =============================================================================================
# Upstreams: TCP echo and HTTP/1.1 echo
# =============================================================================================


class Upstreams:
    def __init__(self):
        self.echo_open = 0
        self.http_open = 0
        self.http_idle = set()  # writers of HTTP connections waiting for a request head
        self.requests = 0
        self.bad_requests = 0

    async def echo(self, r, w):
        self.echo_open += 1
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                w.write(data)
                await w.drain()
            if w.can_write_eof():
                w.write_eof()
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.echo_open -= 1
            w.close()

    async def http(self, r, w):
        self.http_open += 1
        try:
            while True:
                self.http_idle.add(w)
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                finally:
                    self.http_idle.discard(w)
                lines = head.decode("latin-1").split("\r\n")
                method, _path, version = lines[0].split(" ", 2)
                hdr = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        hdr[k.strip().lower()] = v.strip()
                if hdr.get("transfer-encoding", "").lower() == "chunked":
                    body = await read_chunked(r)
                else:
                    body = await r.readexactly(int(hdr.get("content-length", "0")))
                self.requests += 1
                close = hdr.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                if method not in ("POST", "PUT"):
                    self.bad_requests += 1
                out = [b"HTTP/1.1 200 OK", b"content-type: application/octet-stream",
                       b"content-length: %d" % len(body),
                       b"x-body-sha256: " + hashlib.sha256(body).hexdigest().encode()]
                if close:
                    out.append(b"connection: close")
                w.write(b"\r\n".join(out) + b"\r\n\r\n" + body)
                await w.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.LimitOverrunError,
                ValueError):
            pass
        finally:
            self.http_open -= 1
            self.http_idle.discard(w)
            w.close()

    async def handle(self, msg):
        if msg["cmd"] == "close_idle":
            # Only connections waiting for a request head: nothing is in flight on them.
            n = 0
            for w in list(self.http_idle):
                w.close()
                n += 1
            return {"closed": n}
        if msg["cmd"] == "stats":
            return {"echo_open": self.echo_open, "http_open": self.http_open,
                    "requests": self.requests, "bad_requests": self.bad_requests}
        raise ValueError(f"unknown command {msg['cmd']}")


async def read_chunked(r):
    body = bytearray()
    while True:
        size = int((await r.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            while (await r.readline()) not in (b"\r\n", b""):
                pass
            return bytes(body)
        body += await r.readexactly(size)
        await r.readexactly(2)


async def upstreams_main():
    u = Upstreams()
    echo = await asyncio.start_server(u.echo, "127.0.0.1", 0, backlog=4096)
    web = await asyncio.start_server(u.http, "127.0.0.1", 0, backlog=4096)
    addr = lambda s: "%s:%d" % s.sockets[0].getsockname()[:2]  # noqa: E731
    sys.stdout.write(json.dumps({"echo": addr(echo), "web": addr(web)}) + "\n")
    sys.stdout.flush()
    await _command_loop(u.handle)


# =============================================================================================
# Load: streaming TCP, the busy pool, HTTP, churn traffic, stalled connections
# =============================================================================================


LOAD_COUNTERS = (
    "tcp_conns", "tcp_conns_ok", "tcp_bytes_sent", "tcp_bytes_verified", "busy_conns", "busy_msgs",
    "busy_bytes_verified", "http_conns", "http_requests", "http_requests_ok", "http_bytes_sent",
    "http_bytes_verified", "stall_conns", "stall_bytes_verified", "churn_ok", "churn_refused",
    "churn_reset", "churn_closed", "churn_timeout", "churn_other", "churn_http_status_other")


class Fail(Exception):
    def __init__(self, kind, detail):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def split(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


class Load:
    def __init__(self, cfg):
        self.cfg = cfg
        self.seed = cfg["seed"]
        self.tcp = split(cfg["tcp"])
        self.web = split(cfg["http"])
        self.running = False
        self.paused = asyncio.Event()  # set: workers park
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.parked = 0
        self.workers = []
        self.busy = {}  # index -> task
        self.busy_stop = False
        self.busy_live = 0
        self.churn_targets = []
        self.stalled = []
        self.probes = 0
        self.c = dict.fromkeys(LOAD_COUNTERS, 0)
        self.failures = {}  # kind -> count
        self.failure_log = []  # first details

    def fail(self, kind, detail):
        self.failures[kind] = self.failures.get(kind, 0) + 1
        if len(self.failure_log) < 40 or (self.failures[kind] <= 5 and len(self.failure_log) < 100):
            self.failure_log.append({"t": round(time.time(), 3), "kind": kind, "detail": detail})

    # --- byte-exact echo checking --------------------------------------------------------------

    async def open(self, addr, what):
        try:
            async with asyncio.timeout(STALL):
                return await asyncio.open_connection(*addr, limit=1 << 18)
        except (OSError, TimeoutError) as e:
            raise Fail("connect", f"{what}: {type(e).__name__}: {e}") from None

    @staticmethod
    def check(chunk, pending, what, offset):
        n = len(chunk)
        if n > len(pending) or pending[:n] != chunk:
            exp = bytes(pending[:n])
            i = next((k for k in range(min(n, len(exp))) if exp[k] != chunk[k]), min(n, len(exp)))
            raise Fail("mismatch", f"{what}: byte {offset + i} differs (sent {exp[i:i + 8].hex()}, "
                                   f"got {chunk[i:i + 8].hex()}; {len(pending)} bytes outstanding, "
                                   f"{n} received)")

    async def stream_conn(self, i, n, rng):
        """One streaming connection: seeded random pieces, echoed; half-close; SHA-256s."""
        what = f"stream {i}.{n}"
        total = rng.randint(self.cfg["stream_min"], self.cfg["stream_max"])
        r, w = await self.open(self.tcp, what)
        self.c["tcp_conns"] += 1
        pending = bytearray()
        sent_h, recv_h = hashlib.sha256(), hashlib.sha256()
        got = 0
        room = asyncio.Event()
        room.set()

        async def reader():
            nonlocal got
            while True:
                try:
                    async with asyncio.timeout(STALL):
                        chunk = await r.read(65536)
                except TimeoutError:
                    raise Fail("stall", f"{what}: no byte for {STALL} s with {len(pending)} "
                                        "outstanding") from None
                except OSError as e:
                    raise Fail("closed", f"{what}: {type(e).__name__}: {e} after {got} bytes") from None
                if not chunk:
                    return
                self.check(chunk, pending, what, got)
                del pending[:len(chunk)]
                recv_h.update(chunk)
                got += len(chunk)
                self.c["tcp_bytes_verified"] += len(chunk)
                if len(pending) < self.cfg["window"]:
                    room.set()

        rt = asyncio.ensure_future(reader())
        rt.add_done_callback(lambda _: room.set())  # a failed reader wakes the writer
        try:
            sent = 0
            while sent < total and not self.paused.is_set() and not rt.done():
                size = min(total - sent, int(2 ** rng.uniform(0, self.cfg["piece_log2"])))
                piece = rng.randbytes(size)
                pending += piece
                sent_h.update(piece)
                w.write(piece)
                sent += size
                self.c["tcp_bytes_sent"] += size
                async with asyncio.timeout(STALL):
                    await w.drain()
                    if len(pending) >= self.cfg["window"]:
                        room.clear()
                        await room.wait()
                await asyncio.sleep(rng.uniform(0, self.cfg["stream_gap"]))
            if not rt.done():
                w.write_eof()
            async with asyncio.timeout(STALL * 2):
                await rt
            if pending:
                raise Fail("lost", f"{what}: EOF with {len(pending)} of {sent} bytes not echoed")
            if sent_h.digest() != recv_h.digest():
                raise Fail("mismatch", f"{what}: SHA-256 of the {sent} bytes sent and received differ")
            self.c["tcp_conns_ok"] += 1
        except TimeoutError:
            raise Fail("stall", f"{what}: no progress for {STALL} s ({len(pending)} bytes outstanding, "
                                f"{got} echoed)") from None
        except OSError as e:
            raise Fail("closed", f"{what}: {type(e).__name__}: {e} ({len(pending)} outstanding)") from None
        finally:
            rt.cancel()
            w.close()

    async def park(self):
        self.parked += 1
        await self.resumed.wait()
        self.parked -= 1

    async def streamer(self, i):
        n = 0
        while self.running:
            if self.paused.is_set():
                await self.park()
                continue
            n += 1
            rng = random.Random(f"{self.seed}:stream:{i}:{n}")
            try:
                await self.stream_conn(i, n, rng)
            except Fail as f:
                self.fail(f.kind, f.detail)
                await asyncio.sleep(0.5)

    async def busy_conn(self, j):
        """A long-lived connection: a small seeded message about every --busy-interval s."""
        gen = 0
        while not self.busy_stop:
            gen += 1
            rng = random.Random(f"{self.seed}:busy:{j}:{gen}")
            what = f"busy {j}.{gen}"
            w = None
            try:
                r, w = await self.open(self.tcp, what)
                self.c["busy_conns"] += 1
                first = True
                while not self.busy_stop:
                    msg = rng.randbytes(rng.randint(8, 64))
                    w.write(msg)
                    try:
                        async with asyncio.timeout(STALL):
                            await w.drain()
                            back = await r.readexactly(len(msg))
                    except TimeoutError:
                        raise Fail("stall", f"{what}: no echo of {len(msg)} bytes within {STALL} s") from None
                    except asyncio.IncompleteReadError as e:
                        raise Fail("closed", f"{what}: EOF after {len(e.partial)} of {len(msg)} bytes") from None
                    except OSError as e:
                        raise Fail("closed", f"{what}: {type(e).__name__}: {e}") from None
                    self.check(back, msg, what, 0)
                    self.c["busy_msgs"] += 1
                    self.c["busy_bytes_verified"] += len(msg)
                    if first:
                        self.busy_live += 1
                        first = False
                    await asyncio.sleep(rng.uniform(0.5, 1.5) * self.cfg["busy_interval"])
                if not first:
                    self.busy_live -= 1
                return
            except Fail as f:
                self.fail(f.kind, f.detail)
                if w is not None and not first:
                    self.busy_live -= 1
                await asyncio.sleep(0.5)
            finally:
                if w is not None:
                    w.close()

    async def http_exchange(self, r, w, path, body, close, what):
        head = (f"POST {path} HTTP/1.1\r\nhost: soak\r\ncontent-type: application/octet-stream\r\n"
                f"content-length: {len(body)}\r\n" + ("connection: close\r\n" if close else "")
                + "\r\n").encode()
        w.write(head + body)
        await w.drain()
        status = await r.readline()
        if not status:
            raise Fail("closed", f"{what}: connection closed before the response")
        hdr = {}
        while True:
            ln = await r.readline()
            if ln in (b"\r\n", b""):
                break
            k, v = ln.decode("latin-1").split(":", 1)
            hdr[k.strip().lower()] = v.strip()
        parts = status.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise Fail("http_status", f"{what}: {status.decode('latin-1').strip()} "
                                      f"(x-fallacy-fault: {hdr.get('x-fallacy-fault')})")
        if hdr.get("transfer-encoding", "").lower() == "chunked":
            got = await read_chunked(r)
        elif "content-length" in hdr:
            got = await r.readexactly(int(hdr["content-length"]))
        else:
            got = await r.read()
        if got != body:
            i = next((k for k in range(min(len(got), len(body))) if got[k] != body[k]),
                     min(len(got), len(body)))
            raise Fail("mismatch", f"{what}: response body differs from the request's at byte {i} "
                                   f"({len(got)} bytes back, {len(body)} sent)")
        if hdr.get("x-body-sha256") != hashlib.sha256(body).hexdigest():
            raise Fail("mismatch", f"{what}: the upstream got a body with another SHA-256")
        return hdr.get("connection", "").lower() == "close"

    async def http_worker(self, i):
        n = 0
        while self.running:
            if self.paused.is_set():
                await self.park()
                continue
            n += 1
            rng = random.Random(f"{self.seed}:http:{i}:{n}")
            what = f"http {i}.{n}"
            w = None
            try:
                r, w = await self.open(self.web, what)
                self.c["http_conns"] += 1
                count = rng.randint(1, self.cfg["http_per_conn"])
                for k in range(count):
                    if self.paused.is_set() or not self.running:
                        break
                    size = 0 if rng.random() < 0.1 else int(2 ** rng.uniform(0, self.cfg["http_body_log2"]))
                    body = rng.randbytes(size)
                    close = k == count - 1 and rng.random() < 0.5
                    self.c["http_requests"] += 1
                    self.c["http_bytes_sent"] += size
                    try:
                        async with asyncio.timeout(STALL):
                            closed = await self.http_exchange(r, w, f"/echo/{i}/{n}/{k}", body,
                                                              close, f"{what}.{k}")
                    except TimeoutError:
                        raise Fail("stall", f"{what}.{k}: no response within {STALL} s") from None
                    except asyncio.IncompleteReadError as e:
                        raise Fail("closed", f"{what}.{k}: EOF after {len(e.partial)} bytes") from None
                    except OSError as e:
                        raise Fail("closed", f"{what}.{k}: {type(e).__name__}: {e}") from None
                    self.c["http_requests_ok"] += 1
                    self.c["http_bytes_verified"] += size
                    if closed:
                        break
                    await asyncio.sleep(rng.uniform(0, self.cfg["http_gap"]))
            except Fail as f:
                self.fail(f.kind, f.detail)
                await asyncio.sleep(0.5)
            finally:
                if w is not None:
                    w.close()

    async def churn_worker(self, i):
        """Traffic through the churn proxies: closures there are expected, only counted."""
        rng = random.Random(f"{self.seed}:churn:{i}")
        while self.running:
            if self.paused.is_set():
                await self.park()
                continue
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            if not self.churn_targets:
                continue
            t = rng.choice(self.churn_targets)
            w = None
            try:
                async with asyncio.timeout(3):
                    r, w = await asyncio.open_connection(*split(t["addr"]))
                    if t["protocol"] == "http":
                        body = rng.randbytes(rng.randint(0, 2048))
                        await self.http_exchange(r, w, "/churn", body, True, "churn")
                    else:
                        for _ in range(3):
                            msg = rng.randbytes(rng.randint(1, 512))
                            w.write(msg)
                            await w.drain()
                            await r.readexactly(len(msg))
                self.c["churn_ok"] += 1
            except ConnectionRefusedError:
                self.c["churn_refused"] += 1
            except ConnectionResetError:
                self.c["churn_reset"] += 1
            except asyncio.IncompleteReadError:
                self.c["churn_closed"] += 1
            except TimeoutError:
                self.c["churn_timeout"] += 1
            except Fail as f:
                self.c["churn_http_status_other" if f.kind == "http_status" else "churn_other"] += 1
            except Exception:  # noqa: BLE001  (anything a destructive fault can do)
                self.c["churn_other"] += 1
            finally:
                if w is not None:
                    w.close()

    async def stall_conn(self, k, size, go):
        """Writes `size` bytes without reading until `go` is set, then reads and checks all."""
        what = f"stalled {k}"
        rng = random.Random(f"{self.seed}:stall:{self.probes}:{k}")
        data = rng.randbytes(size)
        r, w = await self.open(self.tcp, what)
        self.c["stall_conns"] += 1
        try:
            async def write():
                for off in range(0, size, 16384):
                    w.write(data[off:off + 16384])
                    await w.drain()
                w.write_eof()
            wt = asyncio.ensure_future(write())
            await go.wait()
            got = 0
            while got < size:
                async with asyncio.timeout(STALL):
                    chunk = await r.read(65536)
                if not chunk:
                    raise Fail("lost", f"{what}: EOF after {got} of {size} bytes")
                self.check(chunk, data[got:got + len(chunk)], what, got)
                got += len(chunk)
                self.c["stall_bytes_verified"] += len(chunk)
            async with asyncio.timeout(STALL):
                await wt
                if await r.read(1):
                    raise Fail("mismatch", f"{what}: more than the {size} bytes sent came back")
        except TimeoutError:
            raise Fail("stall", f"{what}: stuck for {STALL} s after the toxic removal") from None
        except OSError as e:
            raise Fail("closed", f"{what}: {type(e).__name__}: {e}") from None
        finally:
            w.close()

    # --- commands -----------------------------------------------------------------------------

    def stats(self):
        return {"counters": dict(self.c), "failures": dict(self.failures),
                "failure_log": self.failure_log, "busy_live": self.busy_live,
                "parked": self.parked}

    async def handle(self, msg):
        cmd = msg["cmd"]
        if cmd == "busy_open":
            n = msg["n"]
            t0 = time.monotonic()
            for j in range(len(self.busy), len(self.busy) + n):
                self.busy[j] = asyncio.ensure_future(self.busy_conn(j))
                if j % 50 == 49:
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(60):
                while self.busy_live < len(self.busy) and not self.failures:
                    await asyncio.sleep(0.05)
            return {"busy_live": self.busy_live, "took": round(time.monotonic() - t0, 2)}
        if cmd == "start":
            self.running = True
            for i in range(self.cfg["streams"]):
                self.workers.append(asyncio.ensure_future(self.streamer(i)))
            for i in range(self.cfg["http_workers"]):
                self.workers.append(asyncio.ensure_future(self.http_worker(i)))
            for i in range(self.cfg["churn_workers"]):
                self.workers.append(asyncio.ensure_future(self.churn_worker(i)))
            return {"workers": len(self.workers)}
        if cmd == "pause":
            self.resumed.clear()
            self.paused.set()
            t0 = time.monotonic()
            async with asyncio.timeout(msg.get("timeout", 90)):
                while self.parked < len(self.workers):
                    await asyncio.sleep(0.05)
            return {"took": round(time.monotonic() - t0, 2)}
        if cmd == "resume":
            self.paused.clear()
            self.resumed.set()
            return {}
        if cmd == "churn_targets":
            self.churn_targets = msg["targets"]
            return {}
        if cmd == "stall_start":
            go = asyncio.Event()
            self.probes += 1
            tasks = [asyncio.ensure_future(self.stall_conn(k, msg["bytes"], go)) for k in range(msg["n"])]
            self.stalled.append((go, tasks))
            await asyncio.sleep(msg.get("settle", 1.0))
            return {"n": len(tasks)}
        if cmd == "stall_end":
            go, tasks = self.stalled.pop()
            go.set()
            for t in asyncio.as_completed(tasks):
                try:
                    await t
                except Fail as f:
                    self.fail(f.kind, f.detail)
            return self.stats()
        if cmd == "stats":
            return self.stats()
        if cmd == "close_all":
            self.running = False
            self.busy_stop = True
            self.paused.set()
            self.resumed.set()
            for t in self.workers + list(self.busy.values()):
                t.cancel()
            await asyncio.gather(*self.workers, *self.busy.values(), return_exceptions=True)
            self.busy_live = 0
            return self.stats()
        raise ValueError(f"unknown command {cmd}")


async def load_main(cfg):
    await _command_loop(Load(cfg).handle)


# =============================================================================================
# The controller: admin API, churn, sampling, verdicts
# =============================================================================================


class Admin:
    """Times every admin call (a new connection each, as most Toxiproxy clients do)."""

    def __init__(self, addr, t0):
        self.host, self.port = split(addr)
        self.t0 = t0
        self.calls = []  # [t, route, status, ms]
        self.unexpected = []

    def call(self, method, path, body=None, route=None, expect=(200, 201, 204)):
        route = f"{method} {route or path}"
        data = json.dumps(body) if body is not None else None
        start = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=data, headers={"X-Fallacy-Owner": "soak"})
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            status, raw = 0, f"{type(e).__name__}: {e}".encode()
        finally:
            conn.close()
        ms = (time.perf_counter() - start) * 1000
        self.calls.append([round(time.monotonic() - self.t0, 3), route, status, round(ms, 3)])
        if status not in expect:
            self.unexpected.append({"t": round(time.monotonic() - self.t0, 2), "call": f"{method} {path}",
                                    "body": body, "status": status,
                                    "answer": raw[:300].decode("utf-8", "replace")})
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace")


def parse_metrics(text):
    out = {"tasks_alive": None, "connections_active": {}, "metrics_bytes": len(text), "metrics_series": 0}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        out["metrics_series"] += 1
        name_labels, _, value = line.rpartition(" ")
        if name_labels == "fallacy_tasks_alive":
            out["tasks_alive"] = int(float(value))
        elif name_labels.startswith("fallacy_connections_active{"):
            proxy = name_labels.split('proxy="', 1)[1].split('"', 1)[0]
            out["connections_active"][proxy] = int(float(value))
    return out


def proc_sample(pid):
    s = {"rss_kib": None, "threads": None, "fds": None, "fd_sockets": 0, "fd_pipes": 0,
         "fd_other": 0, "cpu_s": None}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    s["rss_kib"] = int(line.split()[1])
                elif line.startswith("Threads:"):
                    s["threads"] = int(line.split()[1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        s["cpu_s"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return s
    for n in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        if target.startswith("socket:"):
            kind = "fd_sockets"
        elif target.startswith("pipe:") and int(n) > 2:  # not stdout/stderr: splice pipes
            kind = "fd_pipes"
        else:
            kind = "fd_other"
        s[kind] += 1
    s["fds"] = s["fd_sockets"] + s["fd_pipes"] + s["fd_other"]
    return s


# Non-destructive toxics (bytes arrive intact and in order), with magnitudes that keep traffic
# moving: latency <= 50 ms, bandwidth >= 100 KB/s, slicer with small delays.
def latency_attrs(rng, http):
    kind = rng.choice(["plain", "plain", "uniform", "normal", "lognormal", "pareto", "exponential",
                       "empirical", "correlated"] + ([] if http else ["per_connection", "per_byte"]))
    if kind == "plain":
        lat = rng.randint(0, 40)
        return {"latency": lat, "jitter": rng.randint(0, min(lat, 10))}
    if kind == "uniform":
        lo = rng.randint(0, 20)
        return {"distribution": "uniform", "min": f"{lo}ms", "max": f"{lo + rng.randint(1, 30)}ms"}
    if kind == "normal":
        return {"distribution": "normal", "mean": rng.randint(5, 30), "stddev": rng.randint(1, 8), "max": "50ms"}
    if kind == "lognormal":
        p50 = rng.randint(1, 15)
        return {"distribution": "lognormal", "p50": f"{p50}ms", "p99": f"{p50 + rng.randint(5, 30)}ms", "max": "50ms"}
    if kind == "pareto":
        return {"distribution": "pareto", "scale": f"{rng.randint(1, 10)}ms", "shape": rng.choice([1.5, 2.5, 4]),
                "max": "50ms"}
    if kind == "exponential":
        return {"distribution": "exponential", "mean": f"{rng.randint(2, 20)}ms", "max": "50ms"}
    if kind == "empirical":
        return {"distribution": "empirical", "samples": [rng.randint(0, 50) for _ in range(rng.randint(1, 8))]}
    if kind == "correlated":
        return {"latency": rng.randint(5, 30), "jitter": rng.randint(0, 5), "correlation": round(rng.random(), 2)}
    if kind == "per_connection":
        return {"latency": rng.randint(1, 50), "per": "connection"}
    return {"latency": rng.randint(0, 10), "per_byte": rng.randint(1, 50)}


def gen_toxic(rng, http, have_flap):
    kinds = ["latency", "latency", "bandwidth", "slicer", "slow_close", "noop", "loss", "profile"]
    kinds += ["http_delay", "http_delay"] if http else ["connect_delay"]
    if not have_flap:
        kinds.append("flap")
    kind = rng.choice(kinds)
    t = {"type": kind, "stream": rng.choice(["upstream", "downstream"]),
         "toxicity": 1.0 if rng.random() < 0.7 else round(rng.uniform(0.2, 1.0), 2)}
    if kind == "latency":
        t["attributes"] = latency_attrs(rng, http)
    elif kind == "http_delay":
        t["attributes"] = dict(latency_attrs(rng, True), phase=rng.choice(["request", "headers", "body"]))
        if rng.random() < 0.3:
            t["match"] = {"path": f"/echo/{rng.randint(0, 9)}"}
    elif kind == "connect_delay":
        t["attributes"] = latency_attrs(rng, True)
    elif kind == "bandwidth":
        shared = rng.random() < 0.25
        t["attributes"] = {"rate": rng.randint(2000, 20000) if shared else rng.randint(100, 5000),
                           "burst": rng.choice([0, 0, 16384, 65536])}
        if shared:
            t["attributes"]["shared"] = True
    elif kind == "slicer":
        avg = rng.randint(256, 4096)
        t["attributes"] = {"average_size": avg, "size_variation": rng.randint(0, avg // 2),
                           "delay": rng.randint(0, 200)}
    elif kind == "slow_close":
        t["attributes"] = {"delay": rng.randint(0, 1000)}
    elif kind == "noop":
        pass
    elif kind == "loss":  # Bernoulli only: bursts could lose a segment 15 times and reset
        t["attributes"] = {"rate": round(rng.uniform(0.0005, 0.005), 4), "rtt": f"{rng.randint(5, 30)}ms",
                           "rto_min": f"{rng.randint(20, 60)}ms"}
    elif kind == "profile":
        t["attributes"] = {"name": "cross-region"}
    elif kind == "flap":  # blackhole mode holds the bytes: non-destructive
        t["attributes"] = {"down": f"{rng.randint(100, 1000)}ms", "up": f"{rng.randint(1000, 4000)}ms",
                           "mode": "blackhole"}
        t["toxicity"] = 1.0
    return t


def gen_churn_toxic(rng, http):
    """Anything goes on the churn proxies, destructive toxics included."""
    if rng.random() < 0.5:
        t = gen_toxic(rng, http, True)
        return t
    if http:
        choices = [
            {"type": "http_abort", "attributes": {"status": rng.choice([500, 503]), "reset": rng.random() < 0.3}},
            {"type": "maintenance", "attributes": {"retry_after": "1s"}},
            {"type": "rate_limit", "attributes": {"rate": rng.randint(1, 20)}},
            {"type": "http_truncate", "attributes": {"bytes": rng.randint(0, 1024)}},
            {"type": "tamper", "attributes": {"flip": 0.01, "set_headers": {"x-soak": "1"}}},
            {"type": "reset_peer", "attributes": {"timeout": rng.randint(0, 500)}},
        ]
    else:
        choices = [
            {"type": "timeout", "attributes": {"timeout": rng.randint(0, 2000)}},
            {"type": "reset_peer", "attributes": {"timeout": rng.randint(0, 500)}},
            {"type": "limit_data", "attributes": {"bytes": rng.randint(0, 2000)}},
            {"type": "corrupt", "attributes": {"rate": 0.01}},
            {"type": "flap", "attributes": {"down": "300ms", "up": "1s", "mode": "reset"}},
        ]
    t = rng.choice(choices)
    t["stream"] = rng.choice(["upstream", "downstream"])
    t["toxicity"] = round(rng.uniform(0.2, 1.0), 2)
    return t


class Soak:
    def __init__(self, args, admin, fallacy_pid, ups, load, addrs, logpath):
        self.args = args
        self.logpath = logpath
        self.gdb = None if args.no_gdb else shutil.which("gdb")
        self.admin = admin
        self.pid = fallacy_pid
        self.ups = ups
        self.load = load
        self.addrs = addrs
        self.rng = random.Random(args.seed)
        self.t0 = admin.t0
        self.samples = []
        self.quiet = []  # at-rest samples
        self.idle = {}
        self.probes = []
        self.events = []  # notable things, for the report
        self.actions = {}
        self.failures = []  # controller-side failures
        self.toxics = {"soak_tcp": {}, "soak_http": {}}  # name -> expiry (monotonic) or None
        self.partitions = {}  # name -> {"heal_at" or "expires_at", "churn"}
        self.churn = {}  # name -> {"protocol", "enabled", "listen", "toxics": set}
        self.seq = 0
        self.next_sample = 0.0

    def now(self):
        return time.monotonic() - self.t0

    def note(self, what):
        log(what)
        self.events.append([round(self.now(), 1), what])

    def act(self, kind):
        self.actions[kind] = self.actions.get(kind, 0) + 1

    def name(self, prefix):
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def pooled(self, prefix, taken, size=3):
        """A name from a small pool (prefix-0 .. prefix-N), as test suites reuse their names;
        None when all are taken. fallacy keeps a metric series per toxic and proxy name for
        good, so unique names would grow /metrics without end (see bench/README.md)."""
        free = [f"{prefix}-{k}" for k in range(size) if f"{prefix}-{k}" not in taken]
        return self.rng.choice(free) if free else None

    # --- sampling --------------------------------------------------------------------------------

    def metrics(self):
        status, text = self.admin.call("GET", "/metrics")
        if status != 200 or not isinstance(text, str):
            return {"tasks_alive": None, "connections_active": {}, "metrics_bytes": None,
                    "metrics_series": None}
        return parse_metrics(text)

    def sample(self, label=None):
        m = self.metrics()
        p = proc_sample(self.pid)
        s = dict(p, t=round(self.now(), 1), tasks_alive=m["tasks_alive"],
                 connections_active=sum(m["connections_active"].values()),
                 connections_by_proxy=m["connections_active"], metrics_bytes=m["metrics_bytes"],
                 metrics_series=m["metrics_series"])
        if label:
            s["label"] = label
        self.samples.append(s)
        return s

    def alive(self):
        try:
            os.kill(self.pid, 0)
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    # --- churn -----------------------------------------------------------------------------------

    def add_toxic(self, proxy):
        live = self.toxics[proxy]
        if len(live) >= self.args.max_toxics:
            return self.remove_toxic(proxy)
        http = proxy == "soak_http"
        t = gen_toxic(self.rng, http, any(n.startswith("flap") for n in live))
        t["name"] = self.pooled(t["type"], live)
        if t["name"] is None:
            return
        ttl = None
        if self.rng.random() < 0.2:
            ttl = self.rng.uniform(0.5, 3.0)
            t["ttl"] = f"{int(ttl * 1000)}ms"
        status, _ = self.admin.call("POST", f"/proxies/{proxy}/toxics", t, route="/proxies/{p}/toxics")
        if status == 200:
            live[t["name"]] = None if ttl is None else time.monotonic() + ttl
            self.act(f"toxic add ({'http' if http else 'tcp'} {t['type']})")

    def remove_toxic(self, proxy, name=None):
        live = self.toxics[proxy]
        names = [n for n, exp in live.items() if exp is None]
        if not names and name is None:
            return
        name = name or self.rng.choice(names)
        self.admin.call("DELETE", f"/proxies/{proxy}/toxics/{name}", route="/proxies/{p}/toxics/{t}")
        live.pop(name, None)
        self.act("toxic remove")

    def update_toxic(self, proxy):
        live = [n for n, exp in self.toxics[proxy].items() if exp is None]
        if not live:
            return self.add_toxic(proxy)
        name = self.rng.choice(live)
        self.admin.call("POST", f"/proxies/{proxy}/toxics/{name}",
                        {"toxicity": round(self.rng.uniform(0.2, 1.0), 2)},
                        route="/proxies/{p}/toxics/{t}")
        self.act("toxic update")

    def expire(self):
        """Forgets toxics whose ttl has passed and partitions due to heal (or healed)."""
        now = time.monotonic()
        for proxy, live in self.toxics.items():
            for n, exp in list(live.items()):
                if exp is not None and now > exp + 1.0:
                    status, _ = self.admin.call("GET", f"/proxies/{proxy}/toxics/{n}",
                                                route="/proxies/{p}/toxics/{t}", expect=(404,))
                    if status != 404:
                        self.failures.append(f"toxic {proxy}/{n} still there 1 s after its ttl")
                    self.act("toxic expired (ttl)")
                    del live[n]
        for name, p in list(self.partitions.items()):
            if "heal_at" in p and now >= p["heal_at"]:
                self.admin.call("DELETE", f"/partitions/{name}", route="/partitions/{name}")
                self.act("partition heal")
                del self.partitions[name]
            elif "expires_at" in p and now >= p["expires_at"] + 1.0:
                status, _ = self.admin.call("GET", f"/partitions/{name}", route="/partitions/{name}",
                                            expect=(404,))
                if status != 404:
                    self.failures.append(f"partition {name} still there 1 s after its duration")
                self.act("partition self-healed")
                del self.partitions[name]

    def open_partition(self, churn_side):
        name = self.name("split-churn" if churn_side else "split")
        if churn_side:
            body = {"name": name, "a": ["soak-churn"], "b": ["soak-echo", "soak-web"],
                    "mode": self.rng.choice(["blackhole", "reset"])}
        else:
            b = self.rng.choice([["soak-echo"], ["soak-web"], ["soak-echo", "soak-web"]])
            body = {"name": name, "a": ["soak-client"], "b": b, "mode": "blackhole"}
        body["direction"] = self.rng.choice(["both", "a_to_b"])
        held = self.rng.uniform(0.2, 2.0)
        selfheal = self.rng.random() < 0.3
        if selfheal:
            body["duration"] = f"{int(held * 1000)}ms"
        status, _ = self.admin.call("POST", "/partitions", body)
        if status == 201:
            key = "expires_at" if selfheal else "heal_at"
            self.partitions[name] = {key: time.monotonic() + held, "churn": churn_side}
            self.act(f"partition open ({'churn' if churn_side else 'checksum'}, {body['direction']})")

    def churn_proxy(self):
        rng = self.rng
        names = list(self.churn)
        choice = rng.random()
        if not names or (choice < 0.3 and len(names) < 4):
            http = rng.random() < 0.4
            name = self.pooled("soak-churn", self.churn, 6)
            body = {"name": name, "listen": "127.0.0.1:0",
                    "upstream": self.addrs["web" if http else "echo"],
                    "labels": {"from": "soak-churn", "to": "soak-web" if http else "soak-echo"}}
            if http:
                body["protocol"] = "http"
            if rng.random() < 0.2:
                body["enabled"] = False
            status, p = self.admin.call("POST", "/proxies", body)
            if status == 201:
                self.churn[name] = {"protocol": "http" if http else "tcp", "enabled": p["enabled"],
                                    "listen": p["listen"], "toxics": set()}
                self.act("proxy create")
        elif choice < 0.45:
            name = rng.choice(names)
            self.delete_churn(name)
        elif choice < 0.7:
            name = rng.choice(names)
            want = not self.churn[name]["enabled"]
            status, p = self.admin.call("POST", f"/proxies/{name}", {"enabled": want}, route="/proxies/{p}")
            if status == 200:
                self.churn[name]["enabled"] = p["enabled"]
                self.churn[name]["listen"] = p["listen"]
                self.act("proxy enable" if want else "proxy disable")
        else:
            name = rng.choice(names)
            c = self.churn[name]
            if c["toxics"] and rng.random() < 0.4:
                t = rng.choice(sorted(c["toxics"]))
                self.admin.call("DELETE", f"/proxies/{name}/toxics/{t}", route="/proxies/{p}/toxics/{t}")
                c["toxics"].discard(t)
                self.act("churn toxic remove")
            else:
                t = gen_churn_toxic(rng, c["protocol"] == "http")
                t["name"] = self.pooled(t["type"], c["toxics"], 2)
                if t["name"] is None:
                    return
                if t["type"] == "flap" and any(x.startswith("flap") for x in c["toxics"]):
                    return
                status, _ = self.admin.call("POST", f"/proxies/{name}/toxics", t, route="/proxies/{p}/toxics")
                if status == 200:
                    c["toxics"].add(t["name"])
                    self.act("churn toxic add")
        self.send_targets()

    def delete_churn(self, name):
        self.admin.call("DELETE", f"/proxies/{name}", route="/proxies/{p}")
        del self.churn[name]
        self.act("proxy delete")

    def send_targets(self):
        targets = [{"addr": c["listen"], "protocol": c["protocol"]} for c in self.churn.values() if c["enabled"]]
        self.load.call("churn_targets", targets=targets)

    def churn_step(self):
        rng = self.rng
        skip = self.args.skip
        steps = []  # (weight, action)
        if "toxics" not in skip:
            steps += [(22, lambda: self.add_toxic("soak_tcp")), (16, lambda: self.remove_toxic("soak_tcp")),
                      (5, lambda: self.update_toxic("soak_tcp"))]
            if "http" not in skip:
                steps += [(15, lambda: self.add_toxic("soak_http")),
                          (12, lambda: self.remove_toxic("soak_http")),
                          (4, lambda: self.update_toxic("soak_http"))]
        if "partitions" not in skip:
            steps.append((10, self.partition_step))
        if "proxies" not in skip:
            steps.append((16, self.churn_proxy))
        if not steps:
            return
        r = rng.uniform(0, sum(w for w, _ in steps))
        for w, action in steps:
            r -= w
            if r <= 0:
                return action()
        return steps[-1][1]()

    def partition_step(self):
        churn_side = self.rng.random() < 0.3
        if churn_side and not self.churn:
            churn_side = False
        if not any(p["churn"] == churn_side for p in self.partitions.values()):
            self.open_partition(churn_side)

    # --- the removal probe -----------------------------------------------------------------------

    def probe(self):
        """Times toxic removals on soak_tcp while the busy pool is open and a few connections
        are stalled (their reader does not read) with bytes in flight behind the toxics.
        Partitions are healed first: the controller waits for the stalled connections, and
        nothing would heal a partition holding them meanwhile."""
        self.heal_partitions()
        self.load.call("stall_start", n=self.args.stalled, bytes=self.args.stall_bytes, settle=0.2)
        added = []
        for t in ({"type": "latency", "stream": "downstream", "attributes": {"latency": 40, "jitter": 10}},
                  {"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 200}},
                  {"type": "slicer", "stream": "downstream",
                   "attributes": {"average_size": 512, "size_variation": 256, "delay": 100}}):
            t["name"] = "probe-" + t["type"]
            status, _ = self.admin.call("POST", "/proxies/soak_tcp/toxics", t, route="/proxies/{p}/toxics")
            if status == 200:
                added.append(t["name"])
        time.sleep(1.5 * self.args.busy_interval)  # every busy connection has sent through them
        m = self.metrics()
        conns = m["connections_active"].get("soak_tcp")
        times = []
        for name in added:
            start = time.perf_counter()
            status, _ = self.admin.call("DELETE", f"/proxies/soak_tcp/toxics/{name}",
                                        route="/proxies/{p}/toxics/{t} (probe)")
            times.append(round((time.perf_counter() - start) * 1000, 3))
        ans = self.load.call("stall_end", timeout=STALL * 3)
        self.probes.append({"t": round(self.now(), 1), "connections_open": conns, "removal_ms": times,
                            "stalled": self.args.stalled, "stall_bytes": self.args.stall_bytes})
        self.note(f"removal probe: {conns} connections open on soak_tcp, removals took "
                  f"{', '.join(f'{x:.1f}' for x in times)} ms")
        return ans

    # --- phases --------------------------------------------------------------------------------------

    INJECT = {  # --inject: destructive toxics the checks must catch (a self-test)
        "corrupt": [("soak_tcp", {"type": "corrupt", "stream": "downstream", "attributes": {"rate": 0.0005}}),
                    ("soak_http", {"type": "tamper", "stream": "downstream", "attributes": {"flip": 0.001}})],
        "reset": [("soak_tcp", {"type": "reset_peer", "stream": "upstream", "toxicity": 0.3,
                                "attributes": {"timeout": 100}}),
                  ("soak_http", {"type": "http_abort", "toxicity": 0.3, "attributes": {"reset": True}})],
        "truncate": [("soak_tcp", {"type": "limit_data", "stream": "downstream", "toxicity": 0.3,
                                   "attributes": {"bytes": 4096}}),
                     ("soak_http", {"type": "http_truncate", "toxicity": 0.3, "attributes": {"bytes": 100}})],
    }

    def inject(self):
        """Adds the --inject toxics to the checksum proxies for 2 s."""
        for proxy, t in self.INJECT[self.args.inject]:
            self.admin.call("POST", f"/proxies/{proxy}/toxics", dict(t, name="injected"), route="/proxies/{p}/toxics")
        self.note(f"--inject {self.args.inject}: destructive toxics on the checksum proxies for 2 s")
        time.sleep(2)
        for proxy, _ in self.INJECT[self.args.inject]:
            self.admin.call("DELETE", f"/proxies/{proxy}/toxics/injected", route="/proxies/{p}/toxics/{t}")

    def run_load(self, seconds, probe_every):
        end = time.monotonic() + seconds
        if self.args.inject and not getattr(self, "injected", False):
            self.injected = True
            self.run_load(seconds / 2, probe_every)
            self.inject()
            seconds /= 2
            end = time.monotonic() + seconds
        next_churn = time.monotonic()
        next_probe = time.monotonic() + min(probe_every, max(2.0, seconds / 3))
        while True:
            now = time.monotonic()
            if now >= end:
                return
            if not self.alive():
                raise RuntimeError("fallacy exited")
            self.expire()
            if now >= self.next_sample:
                self.sample()
                self.next_sample = now + self.args.sample_every
            if now >= next_probe and "probes" not in self.args.skip:
                self.probe()
                next_probe = time.monotonic() + probe_every
            if now >= next_churn:
                self.churn_step()
                next_churn = time.monotonic() + self.rng.uniform(0.1, 0.5)
            heal = min((p.get("heal_at", p.get("expires_at", end)) for p in self.partitions.values()),
                       default=end)
            time.sleep(max(0.0, min(next_churn, end, self.next_sample, next_probe, heal) - time.monotonic()))

    def heal_partitions(self, limit=8.0):
        """Heals the partitions on the checksum proxies now (those with a duration are waited for)."""
        def held():
            return [p for p in self.partitions.values() if not p["churn"]]
        for p in held():
            if "heal_at" in p:
                p["heal_at"] = 0
        deadline = time.monotonic() + limit
        while held() and time.monotonic() < deadline:
            self.expire()
            if held():
                time.sleep(0.1)

    def settle_faults(self):
        """Removes every fault at once: toxics (a ttl one may have just expired: 404 is fine),
        partitions (a self-healing one too), churn proxies; then checks nothing is left."""
        for proxy, live in self.toxics.items():
            for name, exp in list(live.items()):
                self.admin.call("DELETE", f"/proxies/{proxy}/toxics/{name}", route="/proxies/{p}/toxics/{t}",
                                expect=(204,) if exp is None else (204, 404))
            live.clear()
        for name, p in list(self.partitions.items()):
            self.admin.call("DELETE", f"/partitions/{name}", route="/partitions/{name}",
                            expect=(204,) if "heal_at" in p else (204, 404))
        self.partitions.clear()
        for name in list(self.churn):
            self.delete_churn(name)
        self.send_targets()
        status, proxies = self.admin.call("GET", "/proxies")
        left = {n: [t["name"] for t in p.get("toxics", [])] for n, p in (proxies or {}).items()}
        status, parts = self.admin.call("GET", "/partitions")
        if set(left) != {"soak_tcp", "soak_http"} or any(left.values()) or parts:
            self.failures.append(f"faults left after settling: proxies {left}, partitions {parts}")
            self.note(f"faults left after settling: proxies {left}, partitions {parts}")

    def wait_connections(self, want, limit=15.0):
        deadline = time.monotonic() + limit
        while True:
            m = self.metrics()
            total = sum(m["connections_active"].values())
            if total == want or time.monotonic() > deadline:
                return total
            time.sleep(0.25)

    def heap_stats(self):
        """glibc's own figures, through gdb (when there is one): malloc_stats() (bytes the heap
        holds, and bytes in use), then malloc_trim(0) and RSS again. RSS alone cannot tell a
        leak from memory the allocator keeps: fallacy's worker threads each have an arena, and
        glibc hands little of a fragmented arena back."""
        if not self.gdb:
            return {}
        try:
            off = os.path.getsize(self.logpath)
            subprocess.run(["gdb", "-p", str(self.pid), "-batch", "-nx", "-ex", "set scheduler-locking off",
                            "-ex", "call (void)malloc_stats()", "-ex", "call (int)malloc_trim(0)"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.note(f"gdb failed ({type(e).__name__}); no more heap figures")
            self.gdb = None
            return {}
        time.sleep(0.2)
        with open(self.logpath, errors="replace") as f:
            f.seek(off)
            text = f.read()
        total = text.rsplit("Total (incl. mmap):", 1)
        out = {"rss_trimmed_kib": proc_sample(self.pid)["rss_kib"]}
        if len(total) == 2:
            for line in total[1].splitlines()[:3]:
                if "system bytes" in line:
                    out["heap_system_kib"] = int(line.split("=")[1]) // 1024
                elif "in use bytes" in line:
                    out["heap_in_use_kib"] = int(line.split("=")[1]) // 1024
        if "heap_in_use_kib" not in out:
            self.note("gdb gave no malloc_stats figures; no more heap figures")
            self.gdb = None
        return out

    def rest_sample(self, label, want_conns):
        """A sample once the connections have settled to want_conns and fallacy_tasks_alive has
        been sampled again (every 5 s); descriptors are the least of three reads 0.1 s apart
        (a just-closed admin connection may still be open), then the heap figures."""
        self.ups.call("close_idle")  # fallacy's HTTP pool connections to it, now unused
        conns = self.wait_connections(want_conns)
        time.sleep(5.3)
        fds = []
        for _ in range(3):
            fds.append(proc_sample(self.pid))
            time.sleep(0.1)
        fds = min(fds, key=lambda x: x["fds"] or 0)
        s = self.sample(label)
        for k in ("fds", "fd_sockets", "fd_pipes", "fd_other"):
            s[k] = min(s[k], fds[k])
        s["connections_settled"] = conns
        s.update(self.heap_stats())
        return s

    def describe(self, s):
        heap = (f", heap in use {s['heap_in_use_kib'] / 1024:.1f} MiB of {s['heap_system_kib'] / 1024:.1f}, "
                f"RSS after malloc_trim {s['rss_trimmed_kib'] / 1024:.1f} MiB" if "heap_in_use_kib" in s else "")
        return (f"RSS {s['rss_kib'] / 1024:.1f} MiB{heap}, fds {s['fds']} ({s['fd_sockets']} sockets, "
                f"{s['fd_pipes']} splice pipes), tasks {s['tasks_alive']}, connections {s['connections_active']}")

    def quiet_point(self, label):
        """Churn stopped, faults removed, load paused, the busy pool open: an at-rest sample."""
        t_start = self.now()
        self.settle_faults()
        took = self.load.call("pause", timeout=120)["took"]
        busy = self.load.call("stats")["busy_live"]
        q = self.rest_sample(label, busy)
        q.update(busy_live=busy, pause_took=took, quiet_took=round(self.now() - t_start, 1))
        self.quiet.append(q)
        self.note(f"quiet point {label}: {self.describe(q)} (busy {busy})")
        return q

    def idle_sample(self, label):
        s = self.rest_sample(label, 0)
        self.idle[label] = s
        self.note(f"idle {label}: {self.describe(s)}")
        return s

    def run(self):
        a = self.args
        self.idle_sample("start")
        t = time.monotonic()
        ans = self.load.call("busy_open", n=a.busy, timeout=90)
        self.note(f"busy pool: {ans['busy_live']}/{a.busy} connections open and echoing "
                  f"({time.monotonic() - t:.1f} s)")
        self.load.call("start")
        warm = max(a.duration * 0.1, 6.0)
        self.note(f"warm-up: {warm:.0f} s of load and churn")
        self.run_load(warm, a.probe_every)
        self.quiet_point("baseline")
        self.load.call("resume")
        left = a.duration - warm
        while left > 0.5:
            chunk = min(left, a.quiet_every) if a.quiet_every else left
            self.note(f"load and churn for {chunk:.0f} s")
            self.run_load(chunk, a.probe_every)
            left -= chunk
            self.quiet_point("final" if left <= 0.5 else f"at {self.now():.0f} s")
            if left > 0.5:
                self.load.call("resume")
        final = self.load.call("close_all", timeout=60)
        self.idle_sample("end")
        return final


# --- the verdicts and the report -------------------------------------------------------------------


def admin_summary(calls, limit):
    ms = [c[3] for c in calls]
    by_route = {}
    for c in calls:
        by_route.setdefault(c[1], []).append(c[3])
    routes = {r: {"count": len(v), "p50": pctl(v, 0.5), "p99": pctl(v, 0.99), "max": max(v)}
              for r, v in sorted(by_route.items())}
    return {"count": len(ms), "p50": pctl(ms, 0.5), "p99": pctl(ms, 0.99), "max": max(ms) if ms else None,
            "over_limit": sum(1 for x in ms if x > limit), "by_route": routes,
            "slowest": sorted(calls, key=lambda c: -c[3])[:10]}


def verdicts(res, args):
    checks = []

    def check(name, ok, figure, threshold):
        result = ok if isinstance(ok, str) else "PASS" if ok else "FAIL"
        checks.append({"check": name, "result": result, "figure": figure, "threshold": threshold})

    lim = args.admin_limit_ms
    adm = res["admin"]
    check("every admin call answers in time", adm["count"] > 0 and adm["over_limit"] == 0,
          f"{adm['count']} calls: p50 {adm['p50']:.1f} ms, p99 {adm['p99']:.1f} ms, max {adm['max']:.1f} ms"
          if adm["count"] else "no calls", f"each <= {lim:g} ms")
    probe_ms = [x for p in res["probes"] for x in p["removal_ms"]]
    probe_conns = min((p["connections_open"] or 0 for p in res["probes"]), default=0)
    check("toxic removal with the busy pool open", bool(probe_ms) and max(probe_ms) <= lim
          and probe_conns >= args.busy,
          f"{len(probe_ms)} removals with >= {probe_conns} connections open, max "
          f"{max(probe_ms):.1f} ms" if probe_ms else "no probe ran",
          f"each <= {lim:g} ms, >= {args.busy} connections open")
    unexpected = res["admin_unexpected"]
    check("admin calls answer as expected", not unexpected, f"{len(unexpected)} unexpected statuses",
          "0")
    c = res["load"]["counters"]
    fails = res["load"]["failures"]
    bad = sum(fails.values())
    check("checksum traffic intact", bad == 0 and (c["tcp_bytes_verified"] > 0 or not args.streams)
          and (c["http_requests_ok"] > 0 or not args.http_workers) and c["busy_msgs"] > 0,
          f"{c['tcp_bytes_verified'] + c['busy_bytes_verified'] + c['stall_bytes_verified']:,} TCP bytes and "
          f"{c['http_requests_ok']:,} HTTP requests ({c['http_bytes_verified']:,} body bytes) checked; "
          f"failures: {json.dumps(fails) if fails else 'none'}",
          "0 mismatched, lost, stalled or closed")
    check("controller saw no fault misbehave", not res["controller_failures"],
          "; ".join(res["controller_failures"]) or "none", "none")
    q = res["quiet"]
    base = next((x for x in q if x.get("label") == "baseline"), None)
    fin = next((x for x in q if x.get("label") == "final"), None)
    if base and fin:
        def mem(name, key, note=""):
            grow = fin[key] - base[key]
            allow = max(5 * 1024, base[key] * 0.05)
            check(name, grow <= allow,
                  f"{base[key] / 1024:.1f} -> {fin[key] / 1024:.1f} MiB ({grow / 1024:+.1f}){note}",
                  f"growth <= {allow / 1024:.1f} MiB (5 MiB or 5 %)")
        raw = f"; raw RSS {base['rss_kib'] / 1024:.1f} -> {fin['rss_kib'] / 1024:.1f} MiB"
        if "heap_in_use_kib" in base and "heap_in_use_kib" in fin:
            mem("RSS flat at rest (after malloc_trim)", "rss_trimmed_kib", raw)
            mem("heap in use flat at rest (malloc_stats)", "heap_in_use_kib",
                f"; the heap holds {base['heap_system_kib'] / 1024:.1f} -> {fin['heap_system_kib'] / 1024:.1f} MiB")
        else:
            # Without the heap figures, RSS cannot tell a leak from what glibc keeps in its
            # arenas (in the runs behind bench/README.md the raw RSS at rest moved by tens of
            # MiB while the heap in use moved by less than one).
            check("memory flat at rest", "SKIP",
                  f"raw RSS {base['rss_kib'] / 1024:.1f} -> {fin['rss_kib'] / 1024:.1f} MiB; no heap figures "
                  "(gdb missing or cannot attach)", "needs gdb: heap in use and RSS after malloc_trim")
        nb, nf = base["fds"] - base["fd_pipes"], fin["fds"] - fin["fd_pipes"]
        check("file descriptors flat at rest", abs(nf - nb) <= args.fd_slack and fin["fd_pipes"] <= args.pipe_max,
              f"{nb} -> {nf} (sockets {base['fd_sockets']} -> {fin['fd_sockets']}); splice pipes "
              f"{base['fd_pipes']} -> {fin['fd_pipes']}",
              f"± {args.fd_slack}, pipes <= {args.pipe_max}")
        tb, tf = base["tasks_alive"], fin["tasks_alive"]
        check("tasks flat at rest", tb is not None and tf is not None and abs(tf - tb) <= args.task_slack,
              f"{tb} -> {tf}", f"± {args.task_slack}")
    else:
        check("quiet points taken", False, "missing", "baseline and final")
    i0, i1 = res["idle"].get("start"), res["idle"].get("end")
    if i0 and i1:
        check("connections closed after the load", i1["connections_active"] == 0,
              f"{i1['connections_active']} open", "0")
        check("tasks back to idle", i1["tasks_alive"] is not None and i0["tasks_alive"] is not None
              and abs(i1["tasks_alive"] - i0["tasks_alive"]) <= args.task_slack,
              f"{i0['tasks_alive']} -> {i1['tasks_alive']}", f"± {args.task_slack}")
        n0, n1 = i0["fds"] - i0["fd_pipes"], i1["fds"] - i1["fd_pipes"]
        check("file descriptors back to idle", abs(n1 - n0) <= args.fd_slack and i1["fd_pipes"] <= args.pipe_max,
              f"{n0} -> {n1} (+ {i1['fd_pipes']} splice pipes)", f"± {args.fd_slack}")
    else:
        check("idle samples taken", False, "missing", "start and end")
    check("fallacy alive to the end", res["fallacy_alive"], "yes" if res["fallacy_alive"] else "no", "alive")
    return checks


def fmt_ms(x):
    return "—" if x is None else f"{x:.1f}"


def report_md(res):
    a = res["config"]
    out = [f"# bench/soak: {res['verdict']}", "",
           f"{res['meta']['date']}, fallacy {res['meta'].get('fallacy_version')} "
           f"({res['meta']['fallacy_commit']}), binary `{res['meta']['fallacy_bin']}`; seed {a['seed']}, "
           f"{a['duration']:g} s of load (+ {res['took_s'] - a['duration']:.0f} s of quiet points and setup), "
           f"{a['busy']} busy connections, {a['streams']} streaming TCP connections, "
           f"{a['http_workers']} HTTP clients; {os.cpu_count()} CPUs, load {res['meta']['loadavg']}."
           + (" **Interrupted.**" if res.get("interrupted") else ""), ""]
    if res.get("error"):
        out += [f"**Error:** {res['error']}", ""]
    out += ["| check | result | figure | threshold |", "|---|---|---|---|"]
    for c in res["checks"]:
        out.append(f"| {c['check']} | {c['result']} | {c['figure']} | {c['threshold']} |")
    adm = res["admin"]
    out += ["", "## Admin API latency (ms)", "", "| route | calls | p50 | p99 | max |", "|---|---:|---:|---:|---:|"]
    for r, v in adm["by_route"].items():
        out.append(f"| `{r}` | {v['count']} | {fmt_ms(v['p50'])} | {fmt_ms(v['p99'])} | {fmt_ms(v['max'])} |")
    out.append(f"| **all** | {adm['count']} | {fmt_ms(adm['p50'])} | {fmt_ms(adm['p99'])} | {fmt_ms(adm['max'])} |")
    out += ["", "Slowest calls (time into the run, route, status, ms): "
            + "; ".join(f"{c[0]:.1f} s {c[1]} {c[2]} {c[3]:.1f}" for c in adm["slowest"][:5])]
    if res["probes"]:
        out += ["", "Removal probes (time, connections open on soak_tcp, removal times in ms): "
                + "; ".join(f"{p['t']:.0f} s, {p['connections_open']}, "
                            + "/".join(f"{x:.1f}" for x in p["removal_ms"]) for p in res["probes"])]
    c = res["load"]["counters"]
    out += ["", "## Traffic", "",
            f"- TCP streaming: {c['tcp_conns']:,} connections ({c['tcp_conns_ok']:,} checked to the end), "
            f"{c['tcp_bytes_sent']:,} bytes sent, {c['tcp_bytes_verified']:,} echoed and checked",
            f"- busy pool: {c['busy_conns']:,} connections, {c['busy_msgs']:,} messages, "
            f"{c['busy_bytes_verified']:,} bytes checked",
            f"- stalled connections (removal probes): {c['stall_conns']}, {c['stall_bytes_verified']:,} bytes checked",
            f"- HTTP: {c['http_conns']:,} connections, {c['http_requests_ok']:,}/{c['http_requests']:,} "
            f"requests answered and checked, {c['http_bytes_verified']:,} body bytes",
            f"- churn proxies (closures expected, not checked): ok {c['churn_ok']}, refused "
            f"{c['churn_refused']}, reset {c['churn_reset']}, closed {c['churn_closed']}, timed out "
            f"{c['churn_timeout']}, HTTP error {c['churn_http_status_other']}, other {c['churn_other']}",
            f"- fallacy log: {res['log_warnings']} WARN, {res['log_errors']} ERROR lines"]
    if res["load"]["failure_log"]:
        out += ["", "Failures (first ones):", ""]
        out += [f"- {f['kind']}: {f['detail']}" for f in res["load"]["failure_log"][:20]]
    if res["admin_unexpected"]:
        out += ["", "Unexpected admin answers:", ""]
        out += [f"- {u['t']} s `{u['call']}` {json.dumps(u['body'])}: {u['status']} {u['answer']}"
                for u in res["admin_unexpected"][:20]]
    out += ["", "## Churn", "", "| action | count |", "|---|---:|"]
    out += [f"| {k} | {v} |" for k, v in sorted(res["actions"].items())]
    def mib(s, k):
        return "—" if s.get(k) is None else f"{s[k] / 1024:.1f}"
    out += ["", "## At rest", "",
            "RSS is VmRSS; heap figures are glibc's malloc_stats() (in use / held from the system), and "
            "the RSS after malloc_trim(0), both called in fallacy by gdb once the rest of the sample is taken.",
            "", "| point | time (s) | RSS (MiB) | heap in use | heap held | RSS trimmed | fds | sockets | "
            "splice pipes | tasks | connections | threads | /metrics series |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in [res["idle"].get("start")] + res["quiet"] + [res["idle"].get("end")]:
        if s:
            out.append(f"| {s.get('label')} | {s['t']:.0f} | {mib(s, 'rss_kib')} | {mib(s, 'heap_in_use_kib')} | "
                       f"{mib(s, 'heap_system_kib')} | {mib(s, 'rss_trimmed_kib')} | {s['fds']} | "
                       f"{s['fd_sockets']} | {s['fd_pipes']} | {s['tasks_alive']} | {s['connections_active']} | "
                       f"{s['threads']} | {s.get('metrics_series')} |")
    ss = [s for s in res["samples"] if s.get("rss_kib") and not s.get("label")]
    if ss:
        out += ["", "Under load (every sample in the JSON): RSS "
                f"{min(s['rss_kib'] for s in ss) / 1024:.1f}–{max(s['rss_kib'] for s in ss) / 1024:.1f} MiB, "
                f"fds {min(s['fds'] for s in ss)}–{max(s['fds'] for s in ss)}, tasks "
                f"{min(s['tasks_alive'] or 0 for s in ss)}–{max(s['tasks_alive'] or 0 for s in ss)}, connections "
                f"{min(s['connections_active'] for s in ss)}–{max(s['connections_active'] for s in ss)}; "
                f"fallacy CPU {res['fallacy_cpu_s']:.1f} s over {res['took_s']:.0f} s."]
    out += ["", "## Events", ""] + [f"- {t:.1f} s: {e}" for t, e in res["events"]]
    return "\n".join(out) + "\n"


def count_log(path):
    w = e = 0
    try:
        with open(path, errors="replace") as f:
            for line in f:
                w += " WARN " in line or '"level":"WARN"' in line
                e += " ERROR " in line or '"level":"ERROR"' in line
    except OSError:
        pass
    return w, e


def build_fallacy():
    log("building fallacy (cargo build --release)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fallacy"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "fallacy")


def start_fallacy(binary, seed, logf):
    proc = subprocess.Popen([binary, "serve", "--admin", "127.0.0.1:0", "--seed", str(seed)],
                            stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL,
                            preexec_fn=_child_setup(0), start_new_session=True, text=True,
                            env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info")))
    lines = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=read, daemon=True).start()
    try:
        line = lines.get(timeout=30)
    except queue.Empty:
        line = None
    if not line or "http://" not in line:
        stop_pid(proc)
        raise RuntimeError(f"fallacy did not announce its admin API (first line: {line!r})")
    return proc, line.strip().rsplit("http://", 1)[1]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="seconds of load and churn (default 1800; 20 with --quick)")
    p.add_argument("--seed", type=int, default=1, help="seeds every random choice (default 1)")
    p.add_argument("--busy", type=int, help="long-lived light connections (default 1000; 200 with --quick)")
    p.add_argument("--fallacy-bin", help="fallacy binary (default: cargo build --release, target/release/fallacy)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "soak.md"),
                   help="Markdown report (default bench/results/soak.md; .json beside it)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    p.add_argument("--quick", action="store_true", help="the CI version: 20 s of load, 200 busy connections, "
                   "20 streams (about 50 s in all)")
    p.add_argument("--streams", type=int, help="streaming TCP connections at a time (default 50; 20 quick)")
    p.add_argument("--http-workers", type=int, default=8, help="HTTP client connections at a time (default 8)")
    p.add_argument("--admin-limit-ms", type=float, default=100.0, help="the most an admin call may take (100)")
    p.add_argument("--probe-every", type=float, help="seconds between removal probes (default 60; 8 quick)")
    p.add_argument("--quiet-every", type=float, help="seconds of load between quiet points (default 300; "
                   "none quick)")
    p.add_argument("--sample-every", type=float, help="seconds between samples (default 5; 2 quick)")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with fallacy's log")
    p.add_argument("--no-gdb", action="store_true", help="no heap figures (gdb calls malloc_stats and "
                   "malloc_trim in fallacy at the quiet points)")
    p.add_argument("--inject", choices=["corrupt", "reset", "truncate"],
                   help="self-test: put destructive toxics on the checksum proxies for 2 s mid-run; the "
                   "checksum check must then FAIL")
    p.add_argument("--skip", default="", help="for diagnosis, comma-separated: toxics, partitions, proxies "
                   "(churn proxies), probes, http (its traffic and toxics); --streams 0 drops the streams")
    a = p.parse_args(argv)
    a.skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    unknown = a.skip - {"toxics", "partitions", "proxies", "probes", "http"}
    if unknown:
        p.error(f"--skip: unknown {', '.join(sorted(unknown))}")
    if "http" in a.skip:
        a.http_workers = 0
    q = a.quick
    a.duration = a.duration if a.duration is not None else (20 if q else 1800)
    a.busy = a.busy if a.busy is not None else (200 if q else 1000)
    a.streams = a.streams if a.streams is not None else (20 if q else 50)
    a.probe_every = a.probe_every or (8 if q else 60)
    a.quiet_every = a.quiet_every if a.quiet_every is not None else (0 if q else 300)
    a.sample_every = a.sample_every or (2 if q else 5)
    # fixed knobs (recorded in the JSON)
    a.max_toxics = 4
    a.stalled = 8
    a.stall_bytes = 1 << 20
    a.busy_interval = 1.0
    a.fd_slack = 2
    a.task_slack = 2
    # fallacy keeps up to 16 empty splice pipes per worker thread (2 descriptors each)
    a.pipe_max = 16 * 2 * (os.cpu_count() or 2)
    return a


def main(argv):
    args = parse_args(argv)
    nofile = raise_nofile()
    need = 2 * (args.busy + args.streams + args.http_workers + 64) + 200
    if nofile < need:
        log(f"open-file limit {nofile} is below the {need} this run needs")
        return 2
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="fallacy-soak-")
    fallacy = ups = load = None
    res = {"interrupted": False, "error": None}
    soak = None

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # even when started with SIGINT ignored (a background job)
    try:
        binary = args.fallacy_bin or build_fallacy()
        binary = os.path.abspath(binary)
        logf = open(os.path.join(work, "fallacy.log"), "w")
        me = [sys.executable, os.path.abspath(__file__)]
        ups = Child("upstreams", me + ["_upstreams"], 5, open(os.path.join(work, "upstreams.log"), "w"))
        addrs = ups.hello()
        fallacy, admin_addr = start_fallacy(binary, args.seed, logf)
        admin = Admin(admin_addr, t0)
        log(f"fallacy pid {fallacy.pid}, admin {admin_addr}; echo {addrs['echo']}, web {addrs['web']}; work {work}")
        _, ver = admin.call("GET", "/version")
        st, tcp = admin.call("POST", "/proxies", {"name": "soak_tcp", "listen": "127.0.0.1:0",
                                                  "upstream": addrs["echo"],
                                                  "labels": {"from": "soak-client", "to": "soak-echo"}})
        st2, web = admin.call("POST", "/proxies", {"name": "soak_http", "listen": "127.0.0.1:0",
                                                   "upstream": addrs["web"], "protocol": "http",
                                                   "labels": {"from": "soak-client", "to": "soak-web"}})
        if st != 201 or st2 != 201:
            raise RuntimeError(f"could not create the checksum proxies: {tcp} {web}")
        cfg = {"seed": args.seed, "tcp": tcp["listen"], "http": web["listen"], "streams": args.streams,
               "http_workers": args.http_workers, "churn_workers": 0 if "proxies" in args.skip else 4,
               "stream_min": 16 << 10, "stream_max": (256 << 10) if args.quick else (2 << 20),
               "piece_log2": 16, "stream_gap": 0.1, "window": 256 << 10,
               "http_per_conn": 40, "http_body_log2": 16, "http_gap": 0.05,
               "busy_interval": args.busy_interval}
        load = Child("load", me + ["_load", json.dumps(cfg)], 5, open(os.path.join(work, "load.log"), "w"))
        soak = Soak(args, admin, fallacy.pid, ups, load, addrs, os.path.join(work, "fallacy.log"))
        final = soak.run()
        res["load"] = final
    except KeyboardInterrupt as e:
        res["interrupted"] = True
        res["error"] = f"interrupted ({e or 'Ctrl-C'})"
        log(res["error"])
    except Exception as e:  # noqa: BLE001  (reported, then everything is stopped)
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"error: {res['error']}")
    finally:
        if load is not None and "load" not in res:
            try:
                res["load"] = load.call("stats", timeout=10)
            except Exception:  # noqa: BLE001
                pass
        alive = soak.alive() if soak else False
        cpu = proc_sample(fallacy.pid)["cpu_s"] if fallacy else None
        for child in (load, ups):
            if child is not None:
                child.stop()
        stop_pid(fallacy)
    if soak is None:
        log(res["error"] or "nothing ran")
        return 1
    warns, errors = count_log(os.path.join(work, "fallacy.log"))
    res.update({
        "config": {k: v for k, v in vars(args).items()},
        "meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "fallacy_bin": binary,
                 "fallacy_version": (ver or {}).get("version") if isinstance(ver, dict) else None,
                 "fallacy_commit": git_commit(), "loadavg": open("/proc/loadavg").read().split()[0],
                 "nofile": nofile, "cpus": os.cpu_count()},
        "took_s": round(time.monotonic() - t0, 1),
        "admin": admin_summary(soak.admin.calls, args.admin_limit_ms),
        "admin_unexpected": soak.admin.unexpected,
        "probes": soak.probes, "quiet": soak.quiet, "idle": soak.idle, "samples": soak.samples,
        "events": soak.events, "actions": soak.actions, "controller_failures": soak.failures,
        "fallacy_alive": alive, "fallacy_cpu_s": cpu or 0.0,
        "log_warnings": warns, "log_errors": errors,
    })
    if not res.get("load", {}).get("counters"):
        res["load"] = {"counters": dict.fromkeys(LOAD_COUNTERS, 0), "failures": {}, "failure_log": []}
    res["checks"] = verdicts(res, args)
    if res["error"]:
        res["checks"].append({"check": "ran to the end", "result": "FAIL", "figure": res["error"],
                              "threshold": "no error"})
    res["verdict"] = "FAIL" if any(c["result"] == "FAIL" for c in res["checks"]) else "PASS"
    skipped = sum(c["result"] == "SKIP" for c in res["checks"])
    if skipped and res["verdict"] == "PASS":
        res["verdict"] = f"PASS ({skipped} check skipped)"
    res["admin"]["calls"] = soak.admin.calls
    md = report_md(res)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(md)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(md)
    failed = res["verdict"] == "FAIL"
    if failed or args.keep_logs:
        log(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{res['verdict']}: report in {out} (+ .json)")
    if res["interrupted"]:
        return 130
    return 1 if failed and (args.strict or res["error"]) else 0


def git_commit():
    try:
        c = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h"], capture_output=True, text=True,
                           timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml",
                                "Cargo.lock"], capture_output=True, text=True, timeout=10).stdout.strip()
        return c + (" + uncommitted changes in src/ or Cargo.*" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_upstreams":
        raise_nofile()
        asyncio.run(upstreams_main())
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        raise_nofile()
        asyncio.run(load_main(json.loads(sys.argv[2])))
    else:
        sys.exit(main(sys.argv[1:]))
