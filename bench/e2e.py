#!/usr/bin/env python3
"""Measurement half of bench/e2e.sh: runs the loadgen clients against direct / haproxy / fallacy
and prints the PRODUCT.md section 8 table.

bench/e2e.sh starts the servers and proxies and hands this script a JSON file:
  {"loadgen": PATH,
   "targets": {"direct": {"source": ADDR, "echo": ADDR, "http": ADDR, "idle": ADDR, "pid": null},
               "haproxy": {..., "pid": N}, "fallacy": {..., "pid": N} or null},
   "pids": [every long-lived process e2e.sh started], "meta": {...}}

A "trial" measures one figure on the three targets back to back, so they see the same machine.
Ratios are taken inside each trial and the median over trials is reported. A trial during
which other work on the machine used more than --max-other of the CPUs is redone (at most
twice), after waiting for the machine to calm down. Every client runs with a time bound.
"""

import argparse
import datetime
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time

TARGETS = ("direct", "haproxy", "fallacy")
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def log(msg):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def machine_ticks():
    """(busy, total) CPU ticks of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, sum(v[:8])


def proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        f = s[s.rfind(")") + 1:].split()
        return int(f[11]) + int(f[12])
    except (OSError, ValueError, IndexError):
        return 0


def cpu_busy(seconds=1.0):
    """Fraction of all CPUs busy over `seconds`."""
    b0, t0 = machine_ticks()
    time.sleep(seconds)
    b1, t1 = machine_ticks()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(limit_s, threshold=0.25):
    """Waits (at most limit_s) until the machine is mostly idle; returns how busy it was last."""
    deadline = time.time() + limit_s
    busy = cpu_busy()
    while busy > threshold and time.time() < deadline:
        log(f"machine {busy:.0%} busy with other work; waiting for it to calm down")
        time.sleep(4)
        busy = cpu_busy()
    return busy


class OtherWork:
    """Measures the CPU that processes other than ours used during an interval."""

    def __init__(self, pids):
        self.pids = [p for p in pids if p]

    def _ours(self):
        t = os.times()
        own = (t.user + t.system + t.children_user + t.children_system) * HZ
        return own + sum(proc_ticks(p) for p in self.pids)

    def start(self):
        self.t0 = time.time()
        self.m0 = machine_ticks()[0]
        self.o0 = self._ours()

    def stop(self):
        """Fraction of all CPUs used by other work since start()."""
        wall = max(1e-3, time.time() - self.t0)
        other = (machine_ticks()[0] - self.m0) - (self._ours() - self.o0)
        return max(0.0, other / (wall * NCPU * HZ))


class Bench:
    def __init__(self, cfg, args):
        self.loadgen = cfg["loadgen"]
        self.targets = {k: v for k, v in cfg["targets"].items() if v}
        self.meta = cfg.get("meta", {})
        self.other = OtherWork(cfg.get("pids", []) + [t.get("pid") for t in self.targets.values()])
        self.args = args
        q = args.quick
        # seconds per measurement; --quick shortens everything
        # (each target is measured twice per trial, so these are half of its time per trial)
        self.d = {
            "bulk": 2.0 if q else 4.0,
            "http": 1.0 if q else 2.5,
            "http_warm": 0.3 if q else 0.5,
            "rtt": 0.5 if q else 1.5,
            "conn": 0.75 if q else 1.5,
            "conn_warm": 0.2 if q else 0.3,
        }
        self.trials = {}  # metric -> [ {target: value} per accepted trial ]
        self.trial_other = []  # (figure, other-work fraction, accepted)
        self.errors = []

    # -- one client process, bounded by its own watchdog and by the subprocess timeout
    def client(self, target, args, budget):
        cmd = [self.loadgen] + args
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 30)
        except subprocess.TimeoutExpired:
            self.errors.append(f"{target}: {args[0]} timed out")
            return None
        lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
        if not lines:
            self.errors.append(f"{target}: {args[0]} printed nothing (rc {p.returncode}): {p.stderr.strip()[:200]}")
            return None
        r = json.loads(lines[-1])
        if r.get("error"):
            self.errors.append(f"{target}: {args[0]}: {r['error']}")
        return r

    # -- the measurements; each returns {metric: value} for one target
    def bulk(self, t, addrs):
        r = self.client(t, ["bulk", "--addr", addrs["source"], "--duration", str(self.d["bulk"])], self.d["bulk"])
        if r and r.get("bytes", 0) > 0 and not r.get("error"):
            return {"mbps": r["mb_per_s"]}
        return {}

    def http(self, t, addrs):
        args = ["http-load", "--addr", addrs["http"], "--conns", str(self.args.conns),
                "--warmup", str(self.d["http_warm"]), "--duration", str(self.d["http"])]
        if addrs.get("pid"):
            args += ["--cpu-pid", str(addrs["pid"])]
        r = self.client(t, args, self.d["http"] + self.d["http_warm"])
        if not r or r.get("requests", 0) == 0:
            return {}
        if r.get("errors"):
            self.errors.append(f"{t}: http-load had {r['errors']} failed connections")
        out = {"rps": r["rps"], "http_p50": r["p50_us"], "http_p99": r["p99_us"]}
        if r.get("cpu_us_per_req") is not None:
            out["cpu_per_req"] = r["cpu_us_per_req"]
        return out

    def rtt(self, t, addrs):
        r = self.client(t, ["ping-pong", "--addr", addrs["echo"], "--duration", str(self.d["rtt"])],
                        self.d["rtt"] + 2)
        if r and r.get("count", 0) > 0:
            return {"rtt_p50": r["p50_us"], "rtt_p99": r["p99_us"]}
        return {}

    def conn(self, t, addrs):
        r = self.client(t, ["conn-rate", "--addr", addrs["http"], "--conns", str(self.args.conn_workers),
                            "--warmup", str(self.d["conn_warm"]), "--duration", str(self.d["conn"])],
                        self.d["conn"] + self.d["conn_warm"])
        if not r or r.get("connections", 0) == 0:
            return {}
        if r.get("errors"):
            self.errors.append(f"{t}: conn-rate had {r['errors']} failed connections")
        return {"conn_rate": r["conn_per_s"]}

    def memory(self, t, addrs):
        """VmRSS of the proxy before and after opening N idle connections through it."""
        pid, n = addrs.get("pid"), self.args.idle_conns
        if not pid:
            return {}
        time.sleep(0.5)
        before = rss_kib(pid)
        p = subprocess.Popen([self.loadgen, "idle-hold", "--addr", addrs["idle"], "--conns", str(n),
                              "--duration", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([p.stdout], [], [], 40)
            if not ready:
                self.errors.append(f"{t}: idle-hold did not report within 40 s")
                return {}
            r = json.loads(p.stdout.readline() or "{}")
            opened = r.get("opened", 0)
            if opened < n:
                self.errors.append(f"{t}: idle-hold opened {opened}/{n}: {r.get('error', '')}")
            if opened == 0:
                return {}
            time.sleep(1.0)  # let the proxy finish whatever it does per connection
            after = rss_kib(pid)
            return {"mem_before_kib": before, "mem_after_kib": after, "mem_per_conn": (after - before) / opened}
        finally:
            try:
                p.stdin.close()  # EOF tells idle-hold to close its connections
                p.wait(timeout=15)
            except Exception:
                p.kill()
                p.wait(timeout=5)
            time.sleep(1.0)

    def trial(self, name, step, order):
        """One figure on every target back to back; redone if other work disturbed it."""
        for attempt in range(1 + self.args.retries):
            self.other.start()
            seen = {}
            # A B C C B A: a drift of the machine during the trial hits every target alike
            for t in order + order[::-1]:
                addrs = self.targets[t]
                if addrs.get("pid") and not alive(addrs["pid"]):
                    self.errors.append(f"{t}: process {addrs['pid']} died")
                    continue
                for m, v in step(t, addrs).items():
                    seen.setdefault(t, {}).setdefault(m, []).append(v)
                time.sleep(0.2)
            got = {t: {m: statistics.mean(v) for m, v in ms.items()} for t, ms in seen.items()}
            other = self.other.stop()
            last = attempt == self.args.retries or self.over_budget()
            ok = other <= self.args.max_other
            self.trial_other.append((name, other, ok or last))
            if ok or last:
                if not ok:
                    self.errors.append(f"{name}: other work used {other:.0%} of the CPUs; kept anyway")
                metrics = {m for vals in got.values() for m in vals}
                for m in metrics:
                    self.trials.setdefault(m, []).append({t: vals[m] for t, vals in got.items() if m in vals})
                return
            log(f"{name}: other work used {other:.0%} of the CPUs; redoing it")
            wait_quiet(60)

    def over_budget(self):
        return time.time() - self.started > self.args.max_seconds

    def run(self):
        order = [t for t in TARGETS if t in self.targets]
        self.started = time.time()
        for t in order:
            if t != "direct":
                log(f"memory per idle connection: {t} ({self.args.idle_conns} connections)")
                for m, v in self.memory(t, self.targets[t]).items():
                    self.trials.setdefault(m, [{}])[0][t] = v
        steps = (("throughput", self.bulk), ("req/s", self.http), ("round trip", self.rtt),
                 ("new connections", self.conn))
        for rep in range(self.args.runs):
            rot = order[rep % len(order):] + order[:rep % len(order)]  # rotate to spread drift
            log(f"run {rep + 1}/{self.args.runs} ({', '.join(rot)})")
            for name, step in steps:
                self.trial(name, step, rot)
            if self.over_budget() and rep + 1 < self.args.runs:
                self.errors.append(f"stopped after run {rep + 1}: time budget of {self.args.max_seconds:.0f} s spent")
                break
        self.elapsed = time.time() - self.started

    # -- summaries
    def med(self, t, m):
        v = [tr[t] for tr in self.trials.get(m, []) if t in tr]
        return statistics.median(v) if v else None

    def ratio(self, m, a, b, f=lambda x, y: x / y if y else None):
        """Median over trials of f(a's value, b's value), both from the same trial."""
        v = [f(tr[a], tr[b]) for tr in self.trials.get(m, []) if a in tr and b in tr]
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else None


def fmt(x, nd=0):
    return "n/a" if x is None else f"{x:,.{nd}f}"


def rs(x, suffix):
    return "n/a" if x is None else f"{x:,.2f} {suffix}"


def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def table(b):
    rows, results = [], []
    M, R = b.med, b.ratio

    def of_direct(label, m, limit, nd=0):
        d, h, f = M("direct", m), M("haproxy", m), M("fallacy", m)
        rh, rf = R(m, "haproxy", "direct"), R(m, "fallacy", "direct")
        ok = None if rf is None else rf >= limit
        rows.append([label, fmt(d, nd), f"{fmt(h, nd)} ({fmt(rh, 2)}x)", fmt(f, nd), rs(rf, "of direct"),
                     f">= {limit:g} of direct", verdict(ok)])
        results.append((label, ok))

    of_direct("throughput, 1 stream (MB/s)", "mbps", 0.90)
    of_direct(f"req/s, {b.args.conns} conns, 100 B HTTP", "rps", 0.85)

    d, h, f = M("direct", "http_p99"), M("haproxy", "http_p99"), M("fallacy", "http_p99")
    rf = R("http_p99", "fallacy", "haproxy")
    ok = None if rf is None else rf <= 1.10
    rows.append([f"p99 latency, {b.args.conns} conns (µs)", fmt(d),
                 f"{fmt(h)} ({fmt(R('http_p99', 'haproxy', 'direct'), 2)}x)",
                 f"{fmt(f)} ({fmt(R('http_p99', 'fallacy', 'direct'), 2)}x)" if f is not None else "n/a",
                 rs(rf, "x haproxy"), "<= 1.1 x haproxy's", verdict(ok)])
    results.append(("p99 latency", ok))

    for q, lim, tgt in (("p50", 1.0, "<= haproxy's"), ("p99", 1.10, "<= 1.1 x haproxy's")):
        m = f"rtt_{q}"
        added = lambda t: R(m, t, "direct", lambda x, y: x - y)
        rf = R(m, "fallacy", "haproxy")
        ok = None if rf is None else rf <= lim
        ah, af = added("haproxy"), added("fallacy")
        rows.append([f"round trip, 1 conn, {q} (µs; proxies: added over direct)", fmt(M("direct", m), 1),
                     "n/a" if ah is None else f"{ah:+,.1f}", "n/a" if af is None else f"{af:+,.1f}",
                     rs(rf, "x haproxy (total)"), tgt, verdict(ok)])
        results.append((f"round trip {q}", ok))

    of_direct(f"new connection per request (conn/s, {b.args.conn_workers} workers)", "conn_rate", 0.60)

    h, f = M("haproxy", "cpu_per_req"), M("fallacy", "cpu_per_req")
    rf = R("cpu_per_req", "fallacy", "haproxy")
    ok = None if rf is None else rf <= 1.10
    rows.append(["CPU per request, proxy process (µs)", "—", fmt(h, 1), fmt(f, 1), rs(rf, "x haproxy"),
                 "<= 1.1 x haproxy's", verdict(ok)])
    results.append(("CPU per request", ok))

    h, f = M("haproxy", "mem_per_conn"), M("fallacy", "mem_per_conn")
    ok = None if f is None else f <= 8.0
    rows.append([f"memory per idle connection (KiB, {b.args.idle_conns} conns)", "—", fmt(h, 1), fmt(f, 1),
                 rs(R("mem_per_conn", "fallacy", "haproxy"), "x haproxy"), "<= 8 KiB", verdict(ok)])
    results.append(("memory per idle connection", ok))

    head = ["metric", "direct", "haproxy", "fallacy", "fallacy ratio", "target (PRODUCT.md §8)", "result"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out), results


def details(b):
    names = {
        "mbps": "throughput MB/s", "rps": "req/s", "http_p50": "HTTP p50 µs", "http_p99": "HTTP p99 µs",
        "rtt_p50": "round trip p50 µs", "rtt_p99": "round trip p99 µs", "conn_rate": "conn/s",
        "cpu_per_req": "CPU µs/req", "mem_per_conn": "KiB/idle conn", "mem_before_kib": "RSS before KiB",
        "mem_after_kib": "RSS after KiB",
    }
    present = [t for t in TARGETS if t in b.targets]
    out = ["| metric | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for m, label in names.items():
        tr = b.trials.get(m)
        if not tr:
            continue
        cells = [", ".join(fmt(x.get(t), 1) for x in tr) for t in present]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--conn-workers", type=int, default=4)
    ap.add_argument("--idle-conns", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=420,
                    help="stop starting new runs (and retries) after this much measuring")
    ap.add_argument("--max-other", type=float, default=0.15,
                    help="redo a trial when other work used more than this fraction of the CPUs")
    ap.add_argument("--retries", type=int, default=2, help="redos per disturbed trial")
    ap.add_argument("--wait-quiet", type=float, default=120,
                    help="wait at most this long for other work on the machine to stop (0: don't)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    # SIGTERM (from e2e.sh's cleanup) unwinds normally, so running clients are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(args.config) as f:
        cfg = json.load(f)
    b = Bench(cfg, args)
    busy0 = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else cpu_busy()
    load0 = open("/proc/loadavg").read().split()[:3]
    b.run()
    load1 = open("/proc/loadavg").read().split()[:3]
    tbl, results = table(b)
    meta = b.meta
    redone = sum(1 for _, _, kept in b.trial_other if not kept)
    others = [o for _, o, kept in b.trial_other if kept]
    lines = [
        "# fallacy end-to-end benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {NCPU} CPUs, {platform.platform()}; load average {' '.join(load0)} before, "
        f"{' '.join(load1)} after",
        f"- other work on the machine: {busy0:.0%} of the CPUs at the start; during the kept trials "
        f"median {statistics.median(others) if others else 0:.0%}, max {max(others) if others else 0:.0%}; "
        f"{redone} trial(s) redone because of it",
        f"- fallacy: {meta.get('fallacy_version', 'n/a')}; haproxy: {meta.get('haproxy_version', 'n/a')}",
        f"- {args.runs} run(s){' (--quick)' if args.quick else ''}; absolute figures are medians over runs, "
        "ratios are medians of the ratios within each run; each run measures every target twice "
        "(A B C C B A) and averages the two; measuring took "
        f"{b.elapsed:.0f} s; durations (s): " + ", ".join(f"{k} {v}" for k, v in b.d.items()),
        "- loopback only; every figure in a row was measured in this same run",
        "",
        tbl,
        "",
    ]
    if b.errors:
        lines += ["## Problems seen", ""] + [f"- {e}" for e in b.errors] + [""]
    lines += ["## Every run (in order)", "", details(b), ""]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"trials": b.trials, "other_work": b.trial_other, "errors": b.errors, "meta": meta,
                   "durations": b.d, "results": dict(results)}, f, indent=1)
    log(f"wrote {args.out}")
    missed = [k for k, ok in results if ok is False]
    if args.strict and missed:
        log("missed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
