#!/usr/bin/env python3
"""Shared machinery of the end-to-end benchmarks (bench/perf.py, http_bench.py, fidelity.py).

- CPU accounting: the machine's busy ticks (/proc/stat) against what our own processes used
  (OtherWork), so that a measurement disturbed by other work can be redone.
- Bench: "trials" over targets, each measuring one figure on every target back to back in the
  order A B C ... C B A (the order rotating between runs), ratios inside each trial, medians
  over trials; the loadgen clients (http-load, ping-pong, conn-rate, idle-hold), each run with
  a time bound.
- Formatting of the Markdown report: cells, the header that describes the run, the "every run"
  table, and writing the .md with its .json.

A driver hands Bench a config dict:
  {"loadgen": PATH, "targets": {NAME: {ROLE: ADDR, ..., "pid": N or null}}, "pids": [every
   long-lived process the shell script started], "meta": {...}}
"""

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

TARGETS = ("direct", "haproxy", "fallacy")  # the order of the columns of details(); drivers set it
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
LOG_NAME = "e2e"  # drivers set their own


def log(msg):
    print(f"[{LOG_NAME} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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


def _stat(pid):
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1]), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        return s[s.rfind(")") + 1:].split()
    except OSError:
        return None


def proc_ticks(pid):
    """utime + stime + cutime + cstime of a process (every thread; children it has reaped)."""
    f = _stat(pid)
    try:
        return sum(int(x) for x in f[11:15]) if f else 0
    except (ValueError, IndexError):
        return 0


def children(pids):
    """PIDs of the live direct children of `pids` (socat forks one per connection)."""
    want, out = {str(p) for p in pids if p}, []
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat(d)
            if f and len(f) > 1 and f[1] in want:
                out.append(int(d))
    return out


def tree_ticks(pids):
    """CPU ticks of `pids` with their children: the live ones and, through cutime/cstime, the
    ones they have reaped; stable across a child's exit once its parent has waited for it."""
    pids = [p for p in pids if p]
    return sum(proc_ticks(p) for p in pids + children(pids))


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
        return own + tree_ticks(self.pids)

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

    def open_idle(self, t, addr, n, parallel=32, hold=60, wait=40):
        """Starts `loadgen idle-hold` with n connections to addr and waits (at most `wait` s) until
        it reports; returns (process, its report or None). Hand the process to close_idle()."""
        p = subprocess.Popen([self.loadgen, "idle-hold", "--addr", addr, "--conns", str(n),
                              "--parallel", str(parallel), "--duration", str(hold)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([p.stdout], [], [], wait)
        if not ready:
            self.errors.append(f"{t}: idle-hold did not report within {wait} s")
            return p, None
        r = json.loads(p.stdout.readline() or "{}")
        if r.get("opened", 0) < n:
            self.errors.append(f"{t}: idle-hold opened {r.get('opened', 0)}/{n}: {r.get('error', '')}")
        return p, r

    @staticmethod
    def close_idle(p):
        """Closes idle-hold's connections (EOF on its stdin) and waits for it to exit."""
        try:
            p.stdin.close()
            p.wait(timeout=30)
        except Exception:  # noqa: BLE001  (whatever went wrong, the client must go)
            p.kill()
            p.wait(timeout=5)

    def memory(self, t, addrs, pid=None, n=None, measure=None):
        """VmRSS of the proxy (addrs["pid"], or pid) before and after opening n (--idle-conns)
        idle connections through it; measure(pid, rss before, connections opened), called while
        they are held, may measure something else instead."""
        pid, n = pid or addrs.get("pid"), n or self.args.idle_conns
        if not pid:
            return {}
        time.sleep(0.5)
        before = rss_kib(pid)
        p, r = self.open_idle(t, addrs["idle"], n)
        try:
            opened = (r or {}).get("opened", 0)
            if opened == 0:
                return {}
            time.sleep(1.0)  # let the proxy finish whatever it does per connection
            if measure:
                return measure(pid, before, opened)
            after = rss_kib(pid)
            return {"mem_before_kib": before, "mem_after_kib": after, "mem_per_conn": (after - before) / opened}
        finally:
            self.close_idle(p)
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

    def run_trials(self, steps, order, label="run", stop_on_budget=True):
        """args.runs runs of trial() for every (name, step), the target order rotating between
        runs to spread drift. Past args.max_seconds no trial is redone; with stop_on_budget, no
        new run starts either."""
        self.started = time.time()
        for rep in range(self.args.runs):
            rot = order[rep % len(order):] + order[:rep % len(order)]
            log(f"{label} {rep + 1}/{self.args.runs} ({', '.join(rot)})")
            for name, step in steps:
                self.trial(name, step, rot)
            if stop_on_budget and self.over_budget() and rep + 1 < self.args.runs:
                self.errors.append(f"stopped after {label} {rep + 1}: time budget of {self.args.max_seconds:.0f} s spent")
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


DETAIL_NAMES = {
    "rps": "req/s", "http_p50": "HTTP p50 µs", "http_p99": "HTTP p99 µs", "cpu_per_req": "CPU µs/req",
}


def details(b, names=None, targets=None):
    """One row per metric, one column per target: every trial's value, in order."""
    names = names or DETAIL_NAMES
    present = [t for t in (targets or TARGETS) if t in b.targets]
    out = ["| metric | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for m, label in names.items():
        tr = b.trials.get(m)
        if not tr:
            continue
        cells = [", ".join(fmt(x.get(t), 1) for x in tr) for t in present]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args(ap, runs, max_seconds, wait_quiet, budget_help, strict_help):
    """Adds the options every trial-based driver shares to `ap`, parses the command line, fills
    the defaults that depend on --quick (max_seconds and wait_quiet are (quick, full) pairs),
    makes SIGTERM (from the shell script's cleanup) unwind normally, so that a running client is
    stopped too, and reads --config. Returns (args, config)."""
    ap.add_argument("--config", required=True)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--conns", type=int, default=64, help="connections of the HTTP load")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help=f"{budget_help} (default {max_seconds[1]:g}, {max_seconds[0]:g} with --quick)")
    ap.add_argument("--max-other", type=float, default=0.15,
                    help="redo a trial when other work used more than this fraction of the CPUs")
    ap.add_argument("--retries", type=int, default=2, help="redos per disturbed trial")
    ap.add_argument("--wait-quiet", type=float, default=None,
                    help="wait at most this long for other work on the machine to stop before the first "
                         f"trial (default {wait_quiet[1]:g}, {wait_quiet[0]:g} with --quick; 0: don't)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--strict", action="store_true", help=strict_help)
    args = ap.parse_args()
    if args.max_seconds is None:
        args.max_seconds = max_seconds[0] if args.quick else max_seconds[1]
    if args.wait_quiet is None:
        args.wait_quiet = wait_quiet[0] if args.quick else wait_quiet[1]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(args.config) as f:
        return args, json.load(f)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def header(b, title, busy0, load0, load1, tools):
    """The first lines of a report: date, machine, other work, redone trials, the tools."""
    redone = sum(1 for _, _, kept in b.trial_other if not kept)
    others = [o for _, o, kept in b.trial_other if kept]
    return [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {NCPU} CPUs, {platform.platform()}; load average {load0} before, {load1} after",
        f"- other work on the machine: {busy0:.0%} of the CPUs at the start; during the kept trials "
        f"median {statistics.median(others) if others else 0:.0%}, max {max(others) if others else 0:.0%}; "
        f"{redone} trial(s) redone because of it",
        f"- {tools}",
    ]


def write_report(text, out, data):
    """Prints the Markdown, writes it to `out` and `data` as JSON beside it (same name, .json)."""
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(data, f, indent=1)
    log(f"wrote {out}")
