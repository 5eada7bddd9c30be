#!/usr/bin/env python3
"""Measurement half of bench/perf: direct / haproxy / socat / fallacy, interleaved in one run,
and the PRODUCT.md section 8 table with PASS/MISS.

bench/perf starts the upstreams (iperf3 -s, loadgen echo, http-server, idle-server) and the
proxies, and hands this script a JSON file:
  {"loadgen": PATH,
   "targets": {NAME: {"iperf": ADDR, "echo": ADDR, "http": ADDR, "idle": ADDR,
                      "pid": the proxy process or null, "role_pids": {ROLE: PID or null}}},
   "pids": [every long-lived process bench/perf started], "nofile": "N", "hold_asked": N,
   "fd_note": TEXT, "meta": {...}}
socat forks a process per connection, so its "pid" is null and each role has its own listener
process in "role_pids".

The trials, their redo on other work and the medians are e2e.py's (Bench): a trial measures one
figure on the four targets back to back in the order A B C D D C B A (rotating between runs),
ratios are taken inside each trial and the median over the runs is reported. Before the runs:
memory per idle connection on the fresh processes. After them: the concurrent-connection hold.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (trials, CPU accounting, formatting)
from e2e import (HZ, Bench, alive, children, cpu_busy, details, fmt, header, loadavg, rss_kib,  # noqa: E402
                 tree_ticks, verdict, wait_quiet, write_report)

TARGETS = ("direct", "haproxy", "socat", "fallacy")
PROXIES = TARGETS[1:]
e2e.TARGETS = TARGETS
e2e.LOG_NAME = "perf"
log = e2e.log

NAMES = {  # metric -> label, for the "every run" table
    "gbps1": "throughput, 1 stream, Gbit/s", "gbps8": "throughput, 8 streams, Gbit/s",
    "rps": "req/s (wrk)", "http_p50": "HTTP p50 µs (wrk)", "http_p99": "HTTP p99 µs (wrk)",
    "cpu_per_req": "CPU µs/req", "rtt_p50": "round trip p50 µs", "rtt_p99": "round trip p99 µs",
    "conn_rate": "new conn/s", "mem_per_conn": "KiB/idle conn",
}
UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6}


def nfds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for(cond, limit):
    """Polls cond() every 0.1 s for at most `limit` s; returns its last value."""
    deadline = time.time() + limit
    while not (ok := cond()) and time.time() < deadline:
        time.sleep(0.1)
    return ok


class Perf(Bench):
    def __init__(self, cfg, args):
        super().__init__(cfg, args)
        q = args.quick
        # seconds per measurement (iperf3 and wrk take whole seconds); each target is measured
        # twice per trial
        self.d = {"iperf1": 1 if q else 3, "iperf8": 1 if q else 2, "wrk": 1 if q else 3,
                  "rtt": 0.5 if q else 1.5, "conn": 0.75 if q else 1.5, "conn_warm": 0.2 if q else 0.3}
        self.holds = {}
        self.wrk_errors = {t: 0 for t in TARGETS}
        self.plan, self.pos, self.est = [], 0, {}

    def tool(self, t, cmd, budget):
        """Runs a client (wrk, iperf3) with a time bound; its stdout, or None."""
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 20)
        except subprocess.TimeoutExpired:
            self.errors.append(f"{t}: {cmd[0]} timed out")
            return None
        if p.returncode != 0 and not p.stdout.strip():
            self.errors.append(f"{t}: {cmd[0]} exited {p.returncode}: {p.stderr.strip()[:200]}")
            return None
        return p.stdout

    # -- the figures; each returns {metric: value} for one target
    def iperf(self, t, addrs, streams, key):
        host, port = addrs["iperf"].rsplit(":", 1)
        dur = self.d[key.replace("gbps", "iperf")]
        cmd = ["iperf3", "-c", host, "-p", port, "-t", str(dur), "-P", str(streams), "-J",
               "--connect-timeout", "5000"]
        for attempt in range(2):
            out = self.tool(t, cmd, dur)
            try:
                r = json.loads(out or "{}")
            except ValueError:
                r = {"error": f"unreadable output: {(out or '')[:100]!r}"}
            err = r.get("error") or ("" if out else "no output")
            if err and "busy" in err and attempt == 0:
                time.sleep(1.0)  # the server is still finishing the previous test
                continue
            break
        if err:
            self.errors.append(f"{t}: iperf3 -P {streams}: {err}")
            return {}
        return {key: r["end"]["sum_received"]["bits_per_second"] / 1e9}

    def iperf1(self, t, addrs):
        return self.iperf(t, addrs, 1, "gbps1")

    def iperf8(self, t, addrs):
        return self.iperf(t, addrs, 8, "gbps8")

    def wrk(self, t, addrs):
        """wrk -t2 -c64, and the CPU the proxy used meanwhile (utime+stime of the process and of
        its children, socat's per-connection processes) per request served."""
        pid = addrs["role_pids"].get("http")
        c0 = tree_ticks([pid]) if pid else None
        out = self.tool(t, ["wrk", "-t2", f"-c{self.args.conns}", f"-d{self.d['wrk']}s", "--latency",
                            "--timeout", "5s", f"http://{addrs['http']}/"], self.d["wrk"])
        if pid:
            # socat's children exit once their connections close; the parent reaps them, so
            # their CPU lands in its cutime/cstime
            if not wait_for(lambda: not children([pid]), 10):
                self.errors.append(f"{t}: {len(children([pid]))} socat children still alive 10 s after wrk")
            c1 = tree_ticks([pid])
        m = {k: re.search(p, out or "") for k, p in (
            ("n", r"(\d+) requests in"), ("rps", r"Requests/sec:\s+([\d.]+)"),
            ("p50", r"\s50%\s+([\d.]+)(us|ms|s)\b"), ("p99", r"\s99%\s+([\d.]+)(us|ms|s)\b"))}
        if not all(m.values()) or int(m["n"].group(1)) == 0:
            self.errors.append(f"{t}: wrk: no result: {(out or '')[-200:]!r}")
            return {}
        n = int(m["n"].group(1))
        errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        nerr = (sum(int(x) for x in errs.groups()) if errs else 0) + (int(bad.group(1)) if bad else 0)
        if nerr:
            self.wrk_errors[t] += nerr
            self.errors.append(f"{t}: wrk: {errs.group(0) if errs else ''} {bad.group(0) if bad else ''}".strip())
        res = {"rps": float(m["rps"].group(1)),
               "http_p50": float(m["p50"].group(1)) * UNIT[m["p50"].group(2)],
               "http_p99": float(m["p99"].group(1)) * UNIT[m["p99"].group(2)]}
        if pid:
            res["cpu_per_req"] = (c1 - c0) * 1e6 / HZ / n
        return res

    # -- memory per idle connection, on the fresh processes
    def socat_memory(self, t, addrs):
        """socat: the proportional set size (PSS) of its per-connection processes, plus the
        listener's own growth, per connection; fewer connections than the others (each is a
        process)."""
        def pss(pid, before, opened):
            kids = children([pid])
            total = sum(pss_kib(k) for k in kids) + rss_kib(pid) - before
            return {"mem_per_conn": total / opened, "mem_conns": opened, "mem_processes": len(kids)}

        pid = addrs["role_pids"]["idle"]
        out = self.memory(t, addrs, pid=pid, n=self.args.socat_idle, measure=pss)
        wait_for(lambda: not children([pid]), 10)
        return out

    # -- the concurrent-connection hold
    def hold(self, t, addrs, n, rounds=4, warm=2):
        """Rounds of: open n connections through the proxy to idle-server, each counted only once
        the upstream's greeting byte came back; RSS while held; close them all; wait until the
        proxy has closed its descriptors; RSS. The first `warm` rounds are warm-up: the allocator
        keeps freed pages, and where its arenas settle moves by a megabyte or two from round to
        round, so the baseline is the highest RSS after any warm-up round. Held if every round
        held n; flat if no later round ends above baseline + max(5 MiB, 5 %), the bound bench/soak
        uses too (a leak of 1.6 KiB per connection, noxious', adds 15 MiB a round at 9,800
        connections; glibc's arenas alone moved haproxy's RSS by 1 MiB and fallacy's by 2)."""
        pid = addrs["pid"]
        res = {"conns": n, "rounds": [], "rss_start_kib": rss_kib(pid)}
        for i in range(rounds):
            if not alive(pid):
                self.errors.append(f"{t}: process {pid} died during the hold")
                break
            fd0 = nfds(pid)
            t0 = time.time()
            p, r = self.open_idle(t, addrs["idle"], n, parallel=64, hold=240, wait=150)
            try:
                held = (r or {}).get("opened", 0)
                open_s = time.time() - t0
                time.sleep(1.0)  # let the proxy finish whatever it does per connection
                rss_held, fd_held = rss_kib(pid), nfds(pid)
            finally:
                self.close_idle(p)
            closed = wait_for(lambda: (nfds(pid) or 0) <= fd0 + 4, 60)
            time.sleep(1.0)
            rss_after = rss_kib(pid)
            res["rounds"].append({"held": held, "failed": (r or {}).get("failed"), "open_s": round(open_s, 2),
                                  "rss_held_kib": rss_held, "fds_before": fd0, "fds_held": fd_held,
                                  "fds_after": nfds(pid), "closed": bool(closed), "rss_after_kib": rss_after})
            log(f"hold {t}, round {i + 1}/{rounds}: held {held}/{n} in {open_s:.1f} s, RSS {rss_held} KiB held, "
                f"{rss_after} KiB after closing{'' if closed else ' (the proxy did not close them all)'}")
            if not closed:
                self.errors.append(f"{t}: hold round {i + 1}: {nfds(pid)} descriptors open 60 s after closing, "
                                   f"{fd0} before")
        rs_ = res["rounds"]
        if len(rs_) == rounds:
            base = max(x["rss_after_kib"] for x in rs_[:warm])
            last = max(x["rss_after_kib"] for x in rs_[warm:])
            res.update(baseline_kib=base, growth_kib=last - base,
                       kib_per_closed=(last - base) / (n * (rounds - warm)),
                       kib_per_held=statistics.median(x["rss_held_kib"] - base for x in rs_[warm:]) / n,
                       held_all=all(x["held"] == n for x in rs_), closed_all=all(x["closed"] for x in rs_),
                       flat=last - base <= max(5 * 1024, base // 20))
            res["ok"] = res["held_all"] and res["closed_all"] and res["flat"] and alive(pid)
        else:
            res["ok"] = False
        return res

    # -- the run
    def trial(self, name, step, order):
        t0, n0 = time.time(), len(self.trial_other)
        self.pos += 1
        super().trial(name, step, order)
        if len(self.trial_other) - n0 == 1:  # not redone: how long this figure takes
            self.est[name] = time.time() - t0

    def over_budget(self):
        """Called after each attempt of a trial: redo it only if, with a redo (and the wait for
        the machine to calm down before it), every trial still to come fits in --max-seconds."""
        left = self.plan[self.pos - 1:]
        need = sum(self.est[x] for x in left) + 60
        return time.time() - self.started + need > self.args.max_seconds

    def run(self):
        order = [t for t in TARGETS if t in self.targets]
        for t in PROXIES:
            log(f"memory per idle connection: {t}")
            mem = (self.socat_memory if t == "socat" else self.memory)(t, self.targets[t])
            for m, v in mem.items():
                self.trials.setdefault(m, [{}])[0][t] = v
        steps = [("throughput 1 stream", self.iperf1), ("throughput 8 streams", self.iperf8),
                 ("req/s", self.wrk), ("round trip", self.rtt), ("new connections", self.conn)]
        self.plan = [name for _ in range(self.args.runs) for name, _ in steps]
        # how long a trial takes until one has been measured: 2 x 4 measurements plus start-up
        d = self.d
        for (name, _), secs in zip(steps, (d["iperf1"], d["iperf8"], d["wrk"], d["rtt"],
                                           d["conn"] + d["conn_warm"])):
            self.est[name] = 2 * len(order) * (secs + 0.7)
        self.run_trials(steps, order, stop_on_budget=False)
        for t in ("haproxy", "fallacy"):
            log(f"hold: {t}, {self.args.hold} connections, 4 rounds (2 warm-up)")
            self.holds[t] = self.hold(t, self.targets[t], self.args.hold)

    def per_trial(self, m, f, *ts):
        """Median over trials of f(values of ts in that trial), for trials that have them all."""
        v = [f(*(tr[t] for t in ts)) for tr in self.trials.get(m, []) if all(t in tr for t in ts)]
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else None


# -- the report ---------------------------------------------------------------------------------

def table(b, hold_asked):
    M, R = b.med, b.ratio
    rows, results = [], {}

    def row(label, direct, cells, fa_ratio, target, ok, key):
        rows.append([label, direct] + [cells[t] for t in PROXIES] + [fa_ratio, target, verdict(ok) if key else "—"])
        if key:
            results[key] = ok

    def of_direct(label, m, limit, nd=0, key=None):
        cells = {t: "n/a" if M(t, m) is None else f"{fmt(M(t, m), nd)} ({fmt(R(m, t, 'direct'), 2)}x)"
                 for t in PROXIES}
        rf = R(m, "fallacy", "direct")
        ok = None if rf is None or limit is None else rf >= limit
        row(label, fmt(M("direct", m), nd), cells, e2e.rs(rf, "of direct"),
            "— (for information)" if limit is None else f">= {limit:g} of direct", ok, key)

    of_direct("throughput, 1 stream (Gbit/s, iperf3)", "gbps1", 0.90, 2, "throughput 1 stream")
    of_direct("throughput, 8 streams (Gbit/s, iperf3)", "gbps8", None, 2)
    of_direct(f"req/s, {b.args.conns} conns, 100 B HTTP (wrk)", "rps", 0.85, 0, "req/s")

    m = "http_p99"
    cells = {t: "n/a" if M(t, m) is None else
             f"{fmt(M(t, m))} ({fmt(R(m, t, 'direct'), 2)}x direct, {fmt(R(m, t, 'haproxy'), 2)}x haproxy)"
             for t in PROXIES}
    rf = R(m, "fallacy", "haproxy")
    row(f"p99 latency, {b.args.conns} conns (µs, wrk)", fmt(M("direct", m)), cells, e2e.rs(rf, "x haproxy"),
        "<= 1.1 x haproxy's", None if rf is None else rf <= 1.10, "p99 latency")

    for q, lim, tgt in (("p50", 1.0, "added <= haproxy's"), ("p99", 1.10, "added <= 1.1 x haproxy's")):
        m = f"rtt_{q}"
        cells = {}
        for t in PROXIES:
            added = b.per_trial(m, lambda x, d: x - d, t, "direct")
            cells[t] = "n/a" if added is None else f"{added:+,.1f} ({fmt(R(m, t, 'direct'), 2)}x)"
        rf = b.per_trial(m, lambda f, h, d: (f - d) / (h - d) if h > d else None, "fallacy", "haproxy", "direct")
        row(f"round trip, 1 conn, {q} (µs; proxies: added over direct, in brackets total x direct)",
            fmt(M("direct", m), 1), cells, e2e.rs(rf, "x haproxy's added"), tgt,
            None if rf is None else rf <= lim, f"round trip {q}")

    of_direct(f"new connection per request (conn/s, loadgen conn-rate, {b.args.conn_workers} workers)",
              "conn_rate", 0.60, 0, "new connection per request")

    m = "cpu_per_req"
    cells = {t: "n/a" if M(t, m) is None else f"{fmt(M(t, m), 1)} ({fmt(R(m, t, 'haproxy'), 2)}x haproxy)"
             for t in PROXIES}
    cells["haproxy"] = fmt(M("haproxy", m), 1)
    rf = R(m, "fallacy", "haproxy")
    row("CPU per request during the wrk run (µs; socat: with its per-connection processes)", "—", cells,
        e2e.rs(rf, "x haproxy"), "<= 1.1 x haproxy's", None if rf is None else rf <= 1.10, "CPU per request")

    m = "mem_per_conn"
    cells = {t: fmt(M(t, m), 1) for t in PROXIES}
    mc = (b.trials.get("mem_conns") or [{}])[0].get("socat")
    if M("socat", m) is not None:
        cells["socat"] += f" (PSS of {fmt(mc)} processes)"
    f = M("fallacy", m)
    row(f"memory per idle connection (KiB, {b.args.idle_conns} conns)", "—", cells,
        e2e.rs(R(m, "fallacy", "haproxy"), "x haproxy"), "<= 8 KiB", None if f is None else f <= 8.0,
        "memory per idle connection")

    cells = {"socat": "skipped (a process per connection)"}
    for t in ("haproxy", "fallacy"):
        h = b.holds.get(t) or {}
        if "growth_kib" not in h:
            cells[t] = "failed (see Problems)"
            continue
        held = min(x["held"] for x in h["rounds"])
        cells[t] = (f"held {fmt(held)}/{fmt(h['conns'])}; RSS {fmt(h['rss_start_kib'])} KiB at the start, "
                    f"{fmt(max(x['rss_held_kib'] for x in h['rounds']))} held, baseline {fmt(h['baseline_kib'])}, "
                    f"{h['growth_kib']:+,} after closing ({h['kib_per_closed']:+.3f} KiB/closed conn)")
    fh = b.holds.get("fallacy") or {}
    n = b.args.hold
    label = f"{n:,} concurrent connections (4 rounds; baseline = highest RSS after the 2 warm-up rounds)"
    if n != hold_asked:
        label += f" — {hold_asked:,} asked, fewer for the open-file limit"
    row(label, "—", cells, "—", "all held; RSS <= baseline + max(5 MiB, 5 %) after closing",
        fh.get("ok"), "concurrent connections")

    head = ["metric", "direct", "haproxy", "socat", "fallacy", "fallacy vs reference", "target (PRODUCT.md §8)",
            "result"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out), results


def hold_details(b):
    out = ["| proxy | round | held | failed | open s | fds before / held / after | RSS held KiB | RSS after KiB |",
           "|---|---|---|---|---|---|---|---|"]
    for t, h in b.holds.items():
        for i, x in enumerate(h["rounds"]):
            out.append(f"| {t} | {i + 1}{' (warm-up)' if i < 2 else ''} | {fmt(x['held'])} | {x['failed']} | "
                       f"{x['open_s']} | {x['fds_before']} / {x['fds_held']} / {x['fds_after']} | "
                       f"{fmt(x['rss_held_kib'])} | {fmt(x['rss_after_kib'])} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conn-workers", type=int, default=4, help="conn-rate workers")
    ap.add_argument("--idle-conns", type=int, default=2000)
    ap.add_argument("--socat-idle", type=int, default=None, help="idle connections through socat "
                    "(a process each; default 200, 100 with --quick)")
    ap.add_argument("--hold", type=int, default=10000)
    args, cfg = e2e.parse_args(
        ap, runs=3, max_seconds=(120, 480), wait_quiet=(10, 30),
        budget_help="no trial is redone unless the trials left still fit in this much measuring; "
                    "every run is measured regardless",
        strict_help="exit 1 when fallacy misses a target")
    if args.socat_idle is None:
        args.socat_idle = min(args.idle_conns, 100 if args.quick else 200)
    b = Perf(cfg, args)
    t_start = time.time()
    busy0 = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else cpu_busy()
    load0 = loadavg()
    b.run()
    load1 = loadavg()
    tbl, results = table(b, cfg.get("hold_asked", args.hold))
    meta = b.meta
    kept = min((len(b.trials.get(m, [])) for m in ("gbps1", "gbps8", "rps", "rtt_p50", "conn_rate")), default=0)
    lines = header(b, "fallacy end-to-end performance (bench/perf)", busy0, load0, load1,
                   f"commit {meta.get('fallacy_commit', '?')}; fallacy {meta.get('fallacy_version', '?')} "
                   f"(binary built {meta.get('fallacy_built', '?')}); haproxy {meta.get('haproxy_version', '?')} "
                   f"(mode tcp); socat {meta.get('socat_version', '?')} (fork, nodelay); iperf3 "
                   f"{meta.get('iperf3_version', '?')}; wrk {meta.get('wrk_version', '?')}")
    lines += [
        f"- {kept} run(s) of every figure{' (--quick)' if args.quick else ''}; each run measures every target "
        "twice (A B C D D C B A, the order rotating between runs) and averages the two; absolute figures "
        "are medians over runs, ratios are medians of the ratios within each run; measuring took "
        f"{b.elapsed:.0f} s of trials, {time.time() - t_start:.0f} s in all; durations (s): "
        + ", ".join(f"{k} {v}" for k, v in b.d.items()),
        f"- open files: limit {cfg.get('nofile', '?')}" + (f"; {cfg['fd_note']}" if cfg.get("fd_note") else ""),
        "- loopback only; every figure in a row was measured in this same run",
        "",
        tbl,
        "",
    ]
    if b.errors:
        lines += ["## Problems seen", ""] + [f"- {e}" for e in b.errors] + [""]
    lines += ["## Every run (in order)", "", details(b, NAMES), "",
              "## Concurrent-connection hold", "", hold_details(b), ""]
    write_report("\n".join(lines), args.out, {
        "trials": b.trials, "holds": b.holds, "other_work": b.trial_other, "errors": b.errors, "meta": meta,
        "durations": b.d, "results": results, "nofile": cfg.get("nofile"), "hold": args.hold,
        "hold_asked": cfg.get("hold_asked"), "fd_note": cfg.get("fd_note"), "wrk_errors": b.wrk_errors})
    missed = [k for k, ok in results.items() if ok is False]
    if args.strict and missed:
        log("missed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
