#!/usr/bin/env python3
"""Measurement half of bench/http.sh: loadgen http-load against direct / haproxy (mode http) /
fallacy's HTTP proxy / fallacy's TCP proxy, and a Markdown table of req/s, latency and CPU per
request.

bench/http.sh starts the upstream and the proxies and hands this script a JSON file:
  {"loadgen": PATH, "admin": URL, "fallacy_log": PATH, "haproxy_log": PATH,
   "targets": {"direct": {"http": ADDR, "pid": null}, "haproxy": {"http": ADDR, "pid": N},
               "fallacy_http": {"http": ADDR, "pid": N, "proxy": NAME}, "fallacy_tcp": {...}},
   "pids": [every long-lived process http.sh started], "meta": {...}}

The trials, their redo on other work and the medians are e2e.py's (its Bench class): a trial
measures every target back to back in the order A B C D D C B A, ratios are taken inside each
trial, and the report gives the median over trials. Besides the load, it sends a few plain
requests through every target (keep-alive, a POST body, Connection: close, HTTP/1.0) and, at the
end, compares fallacy's request counter with what the clients completed, so that an HTTP proxy
that answers wrongly shows up in the report and not only as a low req/s.
"""

import argparse
import os
import re
import socket
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (the e2e benchmark: trials, CPU accounting, formatting)
from e2e import (Bench, OtherWork, alive, cpu_busy, details, fmt, header, loadavg, rs, verdict,  # noqa: E402
                 wait_quiet, write_report)

TARGETS = ("direct", "haproxy", "fallacy_http", "fallacy_tcp")
# e2e.details() lists the targets named in e2e.TARGETS
e2e.TARGETS = TARGETS
RPS_TARGET = 0.70  # fallacy's HTTP proxy: req/s >= 0.7 x direct


e2e.LOG_NAME = "http"
log = e2e.log


class HttpBench(Bench):
    def __init__(self, cfg, args):
        super().__init__(cfg, args)
        # every PID once: fallacy serves two targets, and the proxies are in cfg["pids"] too
        pids = cfg.get("pids", []) + [t.get("pid") for t in self.targets.values()]
        self.other = OtherWork(sorted({p for p in pids if p}))
        self.d = {"http": 1.0 if args.quick else 2.5, "http_warm": 0.3 if args.quick else 0.5}
        self.completed = {t: 0 for t in self.targets}  # responses the clients got, warm-up included
        self.failed_conns = {t: 0 for t in self.targets}

    def client(self, target, args, budget):
        r = super().client(target, args, budget)
        if r and args[0] == "http-load":
            self.completed[target] += r.get("requests_total", 0)
            self.failed_conns[target] += r.get("errors", 0)
        return r

    def run(self):
        self.run_trials([("req/s", self.http)], [t for t in TARGETS if t in self.targets], label="trial")


# -- plain requests through each target -------------------------------------------------------

def exchange(addr, request, want_close, wait=2.0):
    """Sends raw `request` on a new connection; returns (status line, body bytes, closed?, error).
    Reads one response (Content-Length framing); with want_close, then waits up to `wait` s for EOF."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return (buf.split(b"\r\n", 1)[0].decode(errors="replace"), 0, True, "closed before the headers")
                buf += chunk
            head, rest = buf.split(b"\r\n\r\n", 1)
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            n = int(m.group(1)) if m else 0
            while len(rest) < n:
                chunk = s.recv(65536)
                if not chunk:
                    return (status, len(rest), True, "closed inside the body")
                rest += chunk
            closed = False
            if want_close:
                s.settimeout(wait)
                try:
                    closed = s.recv(65536) == b""
                except socket.timeout:
                    closed = False
            return (status, n, closed, "")
    except OSError as e:
        return ("", 0, True, str(e))


def probe(addr):
    """A few requests through `addr`; returns ({check: text}, requests sent, [problems])."""
    out, problems, sent = {}, [], 0
    host = addr.rsplit(":", 1)[0]
    # two GETs on one keep-alive connection
    try:
        h, p = addr.rsplit(":", 1)
        with socket.create_connection((h, int(p)), timeout=5) as s:
            f = s.makefile("rb")
            got = []
            for _ in range(2):
                s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                sent += 1
                status = f.readline().decode(errors="replace").strip()
                headers = {}
                while True:
                    line = f.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = line.decode(errors="replace").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = f.read(int(headers.get("content-length", "0")))
                got.append((status, len(body)))
            out["headers"] = ", ".join(sorted(headers))
            ok = all(st.split()[1:2] == ["200"] and n == 100 for st, n in got)
            out["GET x2, keep-alive"] = "200, 100 B twice" if ok else "; ".join(f"{st!r} {n} B" for st, n in got)
            if not ok:
                problems.append(f"GET x2 on one connection: {got}")
    except (OSError, ValueError) as e:
        out["GET x2, keep-alive"] = f"error: {e}"
        problems.append(f"GET x2 on one connection: {e}")
    checks = (
        ("POST 1000 B", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"p" * 1000, False),
        ("Connection: close", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", True),
        ("HTTP/1.0", b"GET / HTTP/1.0\r\nHost: h\r\n\r\n", True),
    )
    for name, req, want_close in checks:
        status, n, closed, err = exchange(addr, req, want_close)
        sent += 1
        text = f"{status or 'no answer'}, {n} B" + (("; closed" if closed else "; still open after 2 s") if want_close else "")
        if err:
            text += f"; {err}"
        out[name] = text
        if err or status.split()[1:2] != ["200"] or n != 100:
            problems.append(f"{name}: {text}")
        elif name == "Connection: close" and not closed:
            problems.append(f"{name}: the connection stayed open after the response")
    return out, sent, problems


def metrics(admin):
    """fallacy's /metrics as {(name, proxy): value}."""
    with urllib.request.urlopen(admin + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1), labels.get("proxy", ""), labels.get("direction", ""))] = float(m.group(3))
    return out


def log_lines(path, pattern):
    try:
        with open(path, errors="replace") as f:
            return [l.rstrip() for l in f if re.search(pattern, l)]
    except OSError:
        return []


# -- the report -------------------------------------------------------------------------------

LABEL = {"direct": "direct", "haproxy": "haproxy (mode http)", "fallacy_http": "fallacy HTTP proxy",
         "fallacy_tcp": "fallacy TCP proxy"}


def table(b):
    M, R = b.med, b.ratio
    rows, results = [], {}
    conns = b.args.conns

    d, h, f, t = (M(x, "rps") for x in TARGETS)
    rf = R("rps", "fallacy_http", "direct")
    ok = None if rf is None else rf >= RPS_TARGET
    rows.append([f"req/s, {conns} conns, 100 B body", fmt(d),
                 f"{fmt(h)} ({fmt(R('rps', 'haproxy', 'direct'), 2)}x)", f"{fmt(f)} ({fmt(rf, 2)}x)",
                 f"{fmt(t)} ({fmt(R('rps', 'fallacy_tcp', 'direct'), 2)}x)", rs(rf, "of direct"),
                 f">= {RPS_TARGET:g} of direct", verdict(ok)])
    results["req/s"] = ok

    for q in ("p50", "p99"):
        m = f"http_{q}"
        cells = [fmt(M("direct", m))]
        for x in ("haproxy", "fallacy_http", "fallacy_tcp"):
            v = M(x, m)
            cells.append("n/a" if v is None else f"{fmt(v)} ({fmt(R(m, x, 'direct'), 2)}x)")
        rows.append([f"{q} latency, {conns} conns (µs; in brackets: x direct)"] + cells +
                     [rs(R(m, "fallacy_http", "haproxy"), "x haproxy"), "—", "—"])

    h, f, t = (M(x, "cpu_per_req") for x in ("haproxy", "fallacy_http", "fallacy_tcp"))
    rt = R("cpu_per_req", "fallacy_tcp", "haproxy")
    rows.append(["CPU per request, proxy process (µs)", "—", fmt(h, 1), fmt(f, 1),
                 "n/a" if t is None else f"{fmt(t, 1)} ({fmt(rt, 2)}x haproxy)",
                 rs(R("cpu_per_req", "fallacy_http", "haproxy"), "x haproxy"), "—", "—"])

    head = ["metric", "direct", "haproxy (mode http)", "fallacy HTTP", "fallacy TCP (ref.)",
            "fallacy HTTP ratio", "target", "result"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out), results


def main():
    args, cfg = e2e.parse_args(
        argparse.ArgumentParser(), runs=7, max_seconds=(60, 230), wait_quiet=(20, 60),
        budget_help="stop starting new trials (and redos) after this much measuring",
        strict_help="exit 1 when the req/s target is missed")
    b = HttpBench(cfg, args)
    present = [t for t in TARGETS if t in b.targets]
    admin = cfg.get("admin")

    # plain requests through every target, before the load
    checks, probe_sent, problems = {}, {t: 0 for t in present}, []
    for t in present:
        checks[t], n, pr = probe(b.targets[t]["http"])
        probe_sent[t] += n
        problems += [f"{LABEL[t]}, before the load: {p}" for p in pr]

    busy0 = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else cpu_busy()
    load0 = loadavg()
    b.run()
    load1 = loadavg()

    # the same requests after the load, then fallacy's own counters and logs
    after = {}
    for t in present:
        after[t], n, pr = probe(b.targets[t]["http"])
        probe_sent[t] += n
        problems += [f"{LABEL[t]}, after the load: {p}" for p in pr]
    for t in present:
        pid = b.targets[t].get("pid")
        if pid and not alive(pid):
            problems.append(f"{LABEL[t]}: process {pid} is gone")
    counters = {}
    if admin:
        time.sleep(0.5)
        try:
            mt = metrics(admin)
            for t in ("fallacy_http", "fallacy_tcp"):
                if t not in b.targets:
                    continue
                px = b.targets[t]["proxy"]
                counters[t] = {
                    "requests_total": mt.get(("fallacy_requests_total", px, "")),
                    "connections_total": mt.get(("fallacy_connections_total", px, "")),
                    "connections_active": mt.get(("fallacy_connections_active", px, "")),
                    "upstream_connect_errors_total": mt.get(("fallacy_upstream_connect_errors_total", px, "")),
                    "bytes_downstream": mt.get(("fallacy_bytes_total", px, "downstream")),
                    "bytes_upstream": mt.get(("fallacy_bytes_total", px, "upstream")),
                    "client_responses": b.completed[t], "probe_requests": probe_sent[t],
                }
            c = counters.get("fallacy_http")
            if c and c["requests_total"] is not None:
                want = c["client_responses"] + c["probe_requests"]
                if c["requests_total"] != want:
                    problems.append(f"fallacy HTTP proxy counted {c['requests_total']:.0f} requests; the clients "
                                    f"completed {c['client_responses']} and the checks sent {c['probe_requests']}")
            for t, c in counters.items():
                if c["upstream_connect_errors_total"]:
                    problems.append(f"{LABEL[t]}: {c['upstream_connect_errors_total']:.0f} upstream connect errors")
        except Exception as e:  # noqa: BLE001  (a report without the counters is still a report)
            problems.append(f"reading fallacy's /metrics: {e}")
    fa_log = log_lines(cfg.get("fallacy_log", ""), r"\b(WARN|ERROR)\b|panicked")
    hp_log = log_lines(cfg.get("haproxy_log", ""), r"\S")
    if fa_log:
        problems.append(f"fallacy logged {len(fa_log)} WARN/ERROR line(s); first: {fa_log[0][:300]}")
    for t in present:
        if b.failed_conns[t]:
            problems.append(f"{LABEL[t]}: {b.failed_conns[t]} http-load connection(s) failed during the load")

    tbl, results = table(b)
    meta = b.meta
    n_trials = len(b.trials.get("rps", []))
    lines = header(b, "fallacy HTTP-mode benchmark", busy0, load0, load1,
                   f"fallacy: {meta.get('fallacy_version', 'n/a')} ({meta.get('fallacy_commit', '?')}, built "
                   f"{meta.get('fallacy_built', '?')}); haproxy: {meta.get('haproxy_version', 'n/a')}, mode http, "
                   "keep-alive both sides") + [
        f"- upstream: loadgen http-server, 100-byte body; load: loadgen http-load, {args.conns} keep-alive "
        "connections of `GET /` back to back, one client thread",
        f"- {n_trials} trial(s){' (--quick)' if args.quick else ''}, each measuring every target twice "
        "(A B C D D C B A, the order rotating between trials) and averaging the two; absolute figures are "
        "medians over trials, ratios are medians of the ratios within each trial; measuring took "
        f"{b.elapsed:.0f} s; window {b.d['http']} s after {b.d['http_warm']} s of warm-up",
        "- loopback only; every figure in a row was measured in this same run",
        "",
        tbl,
        "",
    ]
    if b.errors or problems:
        lines += ["## Problems seen", ""] + [f"- {e}" for e in b.errors + problems] + [""]
    else:
        lines += ["No problems seen: every load connection and every check got its 200s, fallacy's "
                  "request counter matches the responses the clients got, and fallacy logged no "
                  "warning or error.", ""]
    names = ["GET x2, keep-alive", "POST 1000 B", "Connection: close", "HTTP/1.0"]
    lines += ["## Checks (one request each, before the load)", "",
              "| target | " + " | ".join(names) + " | response headers |",
              "|---|" + "---|" * (len(names) + 1)]
    for t in present:
        lines.append(f"| {LABEL[t]} | " + " | ".join(checks[t].get(n, "n/a") for n in names)
                     + f" | {checks[t].get('headers', 'n/a')} |")
    lines.append("")
    if counters:
        lines += ["fallacy's counters after the run: " + "; ".join(
            f"{LABEL[t]}: " + ", ".join(f"{k} {fmt(v) if isinstance(v, (int, float)) else 'n/a'}"
                                        for k, v in c.items()) for t, c in counters.items()), ""]
    lines += ["## Every trial (in order)", "", details(b), ""]
    write_report("\n".join(lines), args.out, {
        "trials": b.trials, "other_work": b.trial_other, "errors": b.errors, "problems": problems,
        "checks_before": checks, "checks_after": after, "fallacy_counters": counters,
        "fallacy_log_warnings": fa_log[:50], "haproxy_log": hp_log[:50], "failed_conns": b.failed_conns,
        "completed": b.completed, "meta": meta, "durations": b.d, "results": results})
    if args.strict and results.get("req/s") is False:
        log(f"missed: req/s >= {RPS_TARGET:g} of direct")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
