#!/usr/bin/env python3
"""Measurement half of bench/fidelity.sh: how faithful fallacy's faults are.

bench/fidelity.sh starts the upstream servers (loadgen echo and source) and `fallacy serve`, and
hands this script a JSON file:
  {"loadgen": PATH, "admin": "http://ADDR", "upstreams": {"echo": ADDR, "source": ADDR},
   "fallacy_pid": N, "pids": [every long-lived process fidelity.sh started], "meta": {...}}

This script creates its proxies and toxics through the admin API and measures, with loadgen
clients, against a direct connection measured in the same run:
  1. latency error: observed one-way delay - direct median one-way delay - requested delay
  2. distribution fidelity: Kolmogorov-Smirnov distance of the observed delays to the target CDF
  3. bandwidth accuracy: achieved / requested rate over the steady part of a stream
  4. throughput under a 10 ms latency toxic, against the same proxy without toxics
Delays are one way: the client stamps each message with its send time (CLOCK_REALTIME) and the
stamp-server answers with the kernel's receive timestamp (SO_TIMESTAMPNS) minus it. A round trip
would also count the echo server's and the client's wake-ups after an idle spell (0.1-0.2 ms
here), which no proxy controls; the one-way delay holds only what the proxy (or the direct
path) adds, the proxy's own wake-up on the client's data included.
A toxic the API refuses (HTTP 400, e.g. a distribution not implemented yet) is reported as
"not supported", not as a failure of the script. Every client runs with a time bound.
"""

import argparse
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import NCPU, OtherWork, cpu_busy  # noqa: E402  (the e2e benchmark's CPU accounting)

# 1 % critical value of the one-sample KS statistic, for large n: 1.63 / sqrt(n)
KS_C_1PCT = 1.63
Z99 = 2.326  # z-score of the 99th percentile of a standard normal


def log(msg):
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def q(sorted_vals, p):
    """Nearest-rank quantile (as loadgen computes them)."""
    if not sorted_vals:
        return None
    i = min(len(sorted_vals), max(1, math.ceil(p * len(sorted_vals)))) - 1
    return sorted_vals[i]


def ks_distance(xs, cdf):
    """sup |F_n(x) - F(x)| of the samples xs against the CDF."""
    xs = sorted(xs)
    n = len(xs)
    d = 0.0
    for i, x in enumerate(xs):
        f = cdf(x)
        d = max(d, f - i / n, (i + 1) / n - f)
    return d


def lognormal_cdf(p50, p99):
    sigma = math.log(p99 / p50) / Z99
    mu = math.log(p50)
    return lambda x: 0.0 if x <= 0 else 0.5 * (1.0 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2.0))))


def lognormal_quantile(p50, p99, p):
    sigma = math.log(p99 / p50) / Z99
    return p50 * math.exp(sigma * statistics.NormalDist().inv_cdf(p))


def pareto_cdf(scale, shape):
    return lambda x: 0.0 if x < scale else 1.0 - (scale / x) ** shape


def pareto_quantile(scale, shape, p):
    return scale / (1.0 - p) ** (1.0 / shape)


def cargo_running():
    try:
        return subprocess.run(["pgrep", "-x", "cargo"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Api:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read().decode(errors="replace")
            try:
                msg = json.loads(raw).get("error", raw)
            except (ValueError, AttributeError):
                msg = raw
            raise ApiError(e.code, msg) from None

    def proxy(self, name, upstream):
        try:
            self.call("DELETE", f"/proxies/{name}")
        except ApiError:
            pass
        p = self.call("POST", "/proxies", {"name": name, "listen": "127.0.0.1:0", "upstream": upstream})
        return p["listen"]

    def add_toxic(self, proxy, name, typ, stream, attributes):
        return self.call("POST", f"/proxies/{proxy}/toxics",
                         {"name": name, "type": typ, "stream": stream, "attributes": attributes})

    def remove_toxic(self, proxy, name):
        try:
            self.call("DELETE", f"/proxies/{proxy}/toxics/{name}")
        except ApiError as e:
            if e.status != 404:
                raise


class Fidelity:
    def __init__(self, cfg, args):
        self.cfg = cfg
        self.args = args
        self.loadgen = cfg["loadgen"]
        self.api = Api(cfg["admin"])
        self.up = cfg["upstreams"]
        self.fallacy_pid = cfg["fallacy_pid"]
        self.other = OtherWork(cfg.get("pids", []) + [self.fallacy_pid])
        quick = args.quick
        self.plan = {
            "ref_rtt_s": 0.5 if quick else 1.0,
            "lat_counts": {1: 500, 10: 150, 100: 30, 1000: 5} if quick else {1: 2000, 10: 500, 100: 100, 1000: 20},
            "dist_n": 2000 if quick else 10000,
            "dist_conns": 20 if quick else 50,
            "bw_rates_kbps": [10, 100, 1000, 10000, 100000],
            "bw_skip_s": 0.5,
            "bw_steady_s": 3.0,
            "bw_reps": 1 if quick else 3,
            "tp_skip_s": 0.5,
            "tp_s": 2.0 if quick else 3.0,
            # single-stream loopback throughput through a proxy swings by 2x from one
            # measurement to the next (thread placement on 2 CPUs), so several short trials
            "tp_trials": 2 if quick else 5,
            "tp_latency_ms": 10,
        }
        self.max_seconds = args.max_seconds or (100 if quick else 540)
        self.cargo_wait_left = 60.0 if quick else 300.0
        self.waited = 0.0
        self.problems = []
        self.res = {"plan": self.plan}
        self.direct_rtt = []  # ms, every direct ping-pong sample of the run
        self.plain_rtt = []  # ms, through the proxy without toxics
        self.direct_ow = []  # ms, every direct one-way delay of the run
        self.plain_ow = []  # ms, one way through the proxy without toxics
        self.others = []  # (step, other-work fraction, kept)

    # -- machine state
    def over_budget(self):
        return time.time() - self.started - self.waited > self.max_seconds

    def settle(self):
        """Waits while a cargo build runs (bounded), so that it does not skew a measurement."""
        if self.cargo_wait_left <= 0 or not cargo_running():
            return
        t0 = time.time()
        log(f"a cargo build is running; waiting for it (at most {self.cargo_wait_left:.0f} s more)")
        while cargo_running() and time.time() - t0 < self.cargo_wait_left:
            time.sleep(3)
        spent = time.time() - t0
        self.cargo_wait_left -= spent
        self.waited += spent
        if cargo_running():
            self.problems.append("a cargo build was still running; measured anyway")
        else:
            time.sleep(2)
            self.waited += 2

    def calm_down(self, limit=30.0):
        t0 = time.time()
        while cpu_busy(1.0) > 0.25 and time.time() - t0 < limit:
            time.sleep(2)
        self.waited += time.time() - t0

    def measured(self, step, fn):
        """Runs fn() while accounting other work; redoes it once when other work disturbed it."""
        for attempt in range(2):
            self.settle()
            self.other.start()
            r = fn()
            other = self.other.stop()
            last = attempt == 1 or self.over_budget()
            ok = other <= self.args.max_other
            self.others.append((step, round(other, 3), ok or last))
            if ok or last:
                if not ok:
                    self.problems.append(f"{step}: other work used {other:.0%} of the CPUs; kept anyway")
                if isinstance(r, dict):
                    r["other_work"] = round(other, 3)
                return r
            log(f"{step}: other work used {other:.0%} of the CPUs; redoing it")
            self.calm_down()

    # -- loadgen clients
    def client(self, args, budget):
        cmd = [self.loadgen] + [str(a) for a in args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 30)
        except subprocess.TimeoutExpired:
            self.problems.append(f"{args[0]} timed out: {' '.join(map(str, args[1:]))}")
            return None
        lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
        if not lines:
            self.problems.append(f"{args[0]} printed nothing (rc {p.returncode}): {p.stderr.strip()[:200]}")
            return None
        r = json.loads(lines[-1])
        if r.get("error"):
            self.problems.append(f"{args[0]} {' '.join(map(str, args[1:3]))}: {r['error']}")
        return r

    def pingpong(self, addr, count, warmup, duration, conns=1, gap_us=0, one_way=False):
        """Round trips (or, to the stamp server, one-way delays) in ms, or [] when the client failed."""
        args = ["ping-pong", "--addr", addr, "--count", count, "--warmup", warmup,
                "--duration", f"{duration:.3f}", "--conns", conns, "--raw", "--gap-us", int(gap_us)]
        r = self.client(args + (["--stamp"] if one_way else []), duration + 2)
        if not r:
            return []
        return [x / 1e6 for x in r.get("samples_ns", [])]

    def bulk(self, addr, duration, skip, limit=None):
        args = ["bulk", "--addr", addr, "--duration", f"{duration:.3f}", "--skip", skip]
        if limit:
            args += ["--bytes", int(limit)]
        r = self.client(args, duration)
        if not r or not r.get("steady_reads"):
            if r:
                self.problems.append(f"bulk {addr}: no steady window ({r.get('bytes')} bytes in {r.get('secs')} s)")
            return None
        return r

    # -- 0. references
    def references(self):
        log("reference: round trip and one-way delay, direct and through fallacy without toxics")
        d = self.plan["ref_rtt_s"]
        for target in ("direct", "plain", "plain", "direct"):
            addr = self.up["echo"] if target == "direct" else self.rtt_addr
            s = self.measured(f"reference round trip ({target})",
                              lambda: self.pingpong(addr, 2_000_000, 2000, d))
            (self.direct_rtt if target == "direct" else self.plain_rtt).extend(s)
            addr = self.up["stamp"] if target == "direct" else self.lat_addr
            s = self.measured(f"reference one-way delay ({target})",
                              lambda: self.pingpong(addr, 2_000_000, 2000, d, one_way=True))
            (self.direct_ow if target == "direct" else self.plain_ow).extend(s)
        if not self.direct_ow:
            raise SystemExit("no direct one-way delays measured; giving up")

    # -- 1. latency accuracy
    def latency(self):
        out = {}
        for ms, count in self.plan["lat_counts"].items():
            log(f"latency {ms} ms: {count} one-way delays")
            # a short direct measurement right before, pooled into the run's direct reference
            self.direct_ow.extend(self.pingpong(self.up["stamp"], 2_000_000, 500, 0.3, one_way=True))
            warmup = max(1, min(50, int(50 / ms)))
            duration = count * (ms / 1000 + 0.002) * 1.5 + 1

            def run():
                name = "fid_latency"
                # For the details: the same proxy without the toxic, idling `ms` between
                # messages as the delayed exchange does. Cores doze in the gap, and the first
                # syscalls after it run cold; that share of the error is not the timer's.
                n_idle = max(10, min(count // 4, int(20_000 / ms)))
                idle_ref = self.pingpong(self.lat_addr, n_idle, 0, n_idle * (ms / 1000 + 0.002) * 1.5 + 1,
                                         gap_us=ms * 1000, one_way=True)
                try:
                    self.api.add_toxic("fid_lat", name, "latency", "upstream", {"latency": ms})
                except ApiError as e:
                    return {"unsupported": e.message, "status": e.status}
                try:
                    return {"ow_ms": self.pingpong(self.lat_addr, count, warmup, duration, one_way=True),
                            "idle_ref_ms": idle_ref}
                finally:
                    self.api.remove_toxic("fid_lat", name)

            out[ms] = self.measured(f"latency {ms} ms", run)
        self.res["latency_raw"] = out

    # -- 2. distribution fidelity
    def distributions(self):
        specs = [
            ("lognormal", "p50 20 ms, p99 300 ms",
             {"distribution": "lognormal", "p50": "20ms", "p99": "300ms"},
             lognormal_cdf(20.0, 300.0),
             lambda p: lognormal_quantile(20.0, 300.0, p),
             20.0 * math.exp((math.log(15.0) / Z99) ** 2 / 2)),
            ("pareto", "scale 10 ms, shape 2.5",
             {"distribution": "pareto", "scale": "10ms", "shape": 2.5},
             pareto_cdf(10.0, 2.5),
             lambda p: pareto_quantile(10.0, 2.5, p),
             2.5 * 10.0 / 1.5),
        ]
        n, conns = self.plan["dist_n"], self.plan["dist_conns"]
        out = {}
        for name, label, attrs, cdf, quant, mean_ms in specs:
            log(f"distribution {name} ({label}): {n} delays over {conns} connections")
            per_conn = math.ceil(n / conns)
            duration = per_conn * (mean_ms / 1000) * 3 + 10

            def run():
                try:
                    self.api.add_toxic("fid_dist", "fid_dist", "latency", "upstream", attrs)
                except ApiError as e:
                    return {"unsupported": e.message, "status": e.status}
                try:
                    return {"ow_ms": self.pingpong(self.dist_addr, n, 1, duration, conns, one_way=True)}
                finally:
                    self.api.remove_toxic("fid_dist", "fid_dist")

            r = self.measured(f"distribution {name}", run)
            r.update({"label": label, "attributes": attrs, "_cdf": cdf, "_quantile": quant})
            out[name] = r
        self.res["distribution_raw"] = out

    # -- 3. bandwidth accuracy
    def bandwidth(self):
        p = self.plan
        out = {r: [] for r in p["bw_rates_kbps"]}
        for rep in range(p["bw_reps"]):
            rates = p["bw_rates_kbps"] if rep % 2 == 0 else p["bw_rates_kbps"][::-1]
            for rate in rates:
                if rep > 0 and self.over_budget():
                    self.problems.append(f"bandwidth: repetition {rep + 1} of {rate} KB/s skipped (time budget)")
                    continue
                log(f"bandwidth {rate} KB/s ({rep + 1}/{p['bw_reps']})")
                duration = p["bw_skip_s"] + p["bw_steady_s"]
                limit = min(rate * 1000 * (duration + 1) * 1.5, 4e9)

                def run():
                    try:
                        self.api.add_toxic("fid_bw", "fid_bw", "bandwidth", "downstream", {"rate": rate})
                    except ApiError as e:
                        return {"unsupported": e.message, "status": e.status}
                    try:
                        return self.bulk(self.bw_addr, duration, p["bw_skip_s"], limit) or {"failed": True}
                    finally:
                        self.api.remove_toxic("fid_bw", "fid_bw")

                out[rate].append(self.measured(f"bandwidth {rate} KB/s", run))
        self.res["bandwidth_raw"] = out

    # -- 4. throughput under latency
    def throughput(self):
        p = self.plan
        lat = p["tp_latency_ms"]
        duration = p["tp_skip_s"] + p["tp_s"]
        trials = []
        for t in range(p["tp_trials"]):
            if t > 0 and self.over_budget():
                self.problems.append(f"throughput: stopped after {t} trial(s) (time budget)")
                break
            log(f"throughput, latency {lat} ms vs none: trial {t + 1}/{p['tp_trials']}")

            def run():
                seen = {"direct": [], "plain": [], "latency": []}
                unsupported = None
                # direct, plain, latency, latency, plain, direct: a drift hits every target alike
                for target in ("direct", "plain", "latency", "latency", "plain", "direct"):
                    if target == "latency" and not seen["latency"] and unsupported is None:
                        try:
                            self.api.add_toxic("fid_bulk", "fid_tp", "latency", "downstream", {"latency": lat})
                        except ApiError as e:
                            unsupported = e.message
                    if target == "latency" and unsupported is not None:
                        continue
                    if target == "plain" and seen["latency"]:
                        self.api.remove_toxic("fid_bulk", "fid_tp")
                    addr = self.up["source"] if target == "direct" else self.bulk_addr
                    r = self.bulk(addr, duration, p["tp_skip_s"])
                    if r:
                        seen[target].append(r["steady_bytes_per_s"] / 1e6)
                    time.sleep(0.2)
                self.api.remove_toxic("fid_bulk", "fid_tp")
                got = {k: statistics.mean(v) for k, v in seen.items() if v}
                got["runs"] = seen
                if unsupported is not None:
                    got["unsupported"] = unsupported
                return got

            trials.append(self.measured(f"throughput trial {t + 1}", run))
        self.res["throughput_raw"] = trials

    def run(self):
        self.started = time.time()
        self.rtt_addr = self.api.proxy("fid_rtt", self.up["echo"])
        self.lat_addr = self.api.proxy("fid_lat", self.up["stamp"])
        self.dist_addr = self.api.proxy("fid_dist", self.up["stamp"])
        self.bw_addr = self.api.proxy("fid_bw", self.up["source"])
        self.bulk_addr = self.api.proxy("fid_bulk", self.up["source"])
        self.references()
        self.latency()
        self.distributions()
        self.bandwidth()
        self.throughput()
        self.elapsed = time.time() - self.started


# ---------------------------------------------------------------------------------------------
# report

def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def sgn(x, nd=3):
    return "n/a" if x is None else f"{x:+.{nd}f}"


def summarize(f):
    """Builds the table rows and the JSON summary from the raw measurements."""
    rows, summary, details = [], {}, []
    direct = sorted(f.direct_rtt)
    plain = sorted(f.plain_rtt)
    d_med = statistics.median(direct) if direct else None
    p_med = statistics.median(plain) if plain else None
    direct_ow = sorted(f.direct_ow)
    plain_ow = sorted(f.plain_ow)
    dow_med = statistics.median(direct_ow)
    pow_med = statistics.median(plain_ow) if plain_ow else None
    summary["reference"] = {
        "direct_rtt_ms": {"n": len(direct), "p50": d_med, "p99": q(direct, 0.99)} if direct else None,
        "plain_rtt_ms": {"n": len(plain), "p50": p_med, "p99": q(plain, 0.99)} if plain else None,
        "direct_one_way_ms": {"n": len(direct_ow), "p50": dow_med, "p99": q(direct_ow, 0.99)},
        "plain_one_way_ms": {"n": len(plain_ow), "p50": pow_med, "p99": q(plain_ow, 0.99)} if plain_ow else None,
    }

    # 1. latency
    summary["latency"] = {}
    details.append("### Latency error (ms) per requested delay")
    details.append("")
    details.append("error = one-way delay - direct median one-way delay - requested. The last columns subtract "
                   "fallacy's own no-toxic one-way median instead: back to back, and after the same idle gap as "
                   "the delayed messages have (what waking up after the gap costs any proxy).")
    details.append("")
    details.append("| requested | n | min | p1 | p50 | p90 | p99 | max | p50 / p99 vs no-toxic proxy | "
                   "p50 / p99 vs no-toxic proxy after the same gap | other work |")
    details.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for ms, r in f.res.get("latency_raw", {}).items():
        metric = "latency error, one way (observed - direct - requested)"
        if r.get("unsupported"):
            rows.append([metric, f"{ms} ms", f"not supported (HTTP {r['status']}: {r['unsupported']})",
                         "p99 <= +0.2 ms", "not supported"])
            summary["latency"][ms] = {"unsupported": r["unsupported"]}
            continue
        err = sorted(x - dow_med - ms for x in r.get("ow_ms", []))
        if not err:
            rows.append([metric, f"{ms} ms", "no samples", "p99 <= +0.2 ms", "n/a"])
            continue
        s = {"n": len(err), "min": err[0], "p1": q(err, 0.01), "p50": q(err, 0.5), "p90": q(err, 0.9),
             "p99": q(err, 0.99), "max": err[-1]}
        ok = s["p99"] <= 0.2 and s["p1"] >= -0.2
        s["ok"] = ok
        summary["latency"][ms] = s
        early = "" if s["p1"] >= -0.2 else f"; EARLY: p1 {s['p1']:+.3f} ms"
        rows.append([metric, f"{ms} ms", f"p50 {sgn(s['p50'])} ms, p99 {sgn(s['p99'])} ms (n={s['n']}{early})",
                     "p99 <= +0.2 ms, p1 >= -0.2 ms", verdict(ok)])

        def versus(ref_median):
            e = sorted(x - ref_median - ms for x in r["ow_ms"])
            return {"p50": q(e, 0.5), "p99": q(e, 0.99)}

        vs_plain = vs_idle = "n/a"
        if pow_med is not None:
            s["vs_plain"] = versus(pow_med)
            vs_plain = f"{sgn(s['vs_plain']['p50'])} / {sgn(s['vs_plain']['p99'])}"
        idle_ref = sorted(r.get("idle_ref_ms") or [])
        if idle_ref:
            s["vs_idle_matched"] = versus(statistics.median(idle_ref)) | {"ref_n": len(idle_ref)}
            vs_idle = f"{sgn(s['vs_idle_matched']['p50'])} / {sgn(s['vs_idle_matched']['p99'])}"
        details.append(f"| {ms} ms | {s['n']} | {sgn(s['min'])} | {sgn(s['p1'])} | {sgn(s['p50'])} | "
                       f"{sgn(s['p90'])} | {sgn(s['p99'])} | {sgn(s['max'])} | {vs_plain} | {vs_idle} | "
                       f"{r.get('other_work', 0):.0%} |")
    details.append("")

    # 2. distributions
    summary["distribution"] = {}
    details.append("### Distribution fidelity")
    details.append("")
    details.append("delay = one-way delay - direct median one-way delay. \"D vs no-toxic proxy\" subtracts "
                   "fallacy's no-toxic one-way median instead, which isolates the shape from the proxy's own cost.")
    details.append("")
    details.append("| distribution | n | D | 1 % critical | D vs no-toxic proxy | p10 obs / target | "
                   "p50 obs / target | p90 obs / target | p99 obs / target | other work |")
    details.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in f.res.get("distribution_raw", {}).items():
        metric = f"latency distribution {name}, KS distance"
        if r.get("unsupported"):
            rows.append([metric, r["label"], f"not supported (HTTP {r['status']}: {r['unsupported']})",
                         "D <= 1.63/sqrt(n)", "not supported"])
            summary["distribution"][name] = {"unsupported": r["unsupported"], "attributes": r["attributes"]}
            continue
        delays = sorted(x - dow_med for x in r.get("ow_ms", []))
        n = len(delays)
        if n == 0:
            rows.append([metric, r["label"], "no samples", "D <= 1.63/sqrt(n)", "n/a"])
            continue
        cdf, quant = r["_cdf"], r["_quantile"]
        d = ks_distance(delays, cdf)
        crit = KS_C_1PCT / math.sqrt(n)
        d_plain = ks_distance(sorted(x - pow_med for x in r["ow_ms"]), cdf) if pow_med is not None else None
        ok = d <= crit
        qs = {p: (q(delays, p), quant(p)) for p in (0.1, 0.5, 0.9, 0.99)}
        summary["distribution"][name] = {"n": n, "D": d, "critical_1pct": crit, "D_vs_plain": d_plain, "ok": ok,
                                         "attributes": r["attributes"],
                                         "quantiles_ms": {str(p): list(v) for p, v in qs.items()}}
        rows.append([metric, r["label"], f"D = {d:.4f} (n={n})", f"D <= 1.63/sqrt(n) = {crit:.4f}", verdict(ok)])
        details.append(f"| {name} ({r['label']}) | {n} | {d:.4f} | {crit:.4f} | "
                       f"{'n/a' if d_plain is None else f'{d_plain:.4f}'} | "
                       + " | ".join(f"{o:.2f} / {t:.2f}" for o, t in qs.values())
                       + f" | {r.get('other_work', 0):.0%} |")
    details.append("")

    # 3. bandwidth
    summary["bandwidth"] = {}
    details.append("### Bandwidth, every measurement")
    details.append("")
    details.append("| requested (KB/s) | achieved / requested, each run | steady window (s) | reads in it |")
    details.append("|---|---|---|---|")
    for rate, runs in f.res.get("bandwidth_raw", {}).items():
        metric = "bandwidth, achieved / requested"
        unsup = [r for r in runs if r.get("unsupported")]
        if unsup:
            rows.append([metric, f"{rate:,} KB/s", f"not supported ({unsup[0]['unsupported']})", "1.00 ± 1 %",
                         "not supported"])
            summary["bandwidth"][rate] = {"unsupported": unsup[0]["unsupported"]}
            continue
        good = [r for r in runs if r.get("steady_bytes_per_s")]
        if not good:
            rows.append([metric, f"{rate:,} KB/s", "no measurement", "1.00 ± 1 %", "n/a"])
            continue
        ratios = [r["steady_bytes_per_s"] / (rate * 1000) for r in good]
        med = statistics.median(ratios)
        ok = abs(med - 1) <= 0.01
        summary["bandwidth"][rate] = {"ratios": ratios, "median": med, "ok": ok,
                                      "bytes_per_s": [r["steady_bytes_per_s"] for r in good]}
        spread = f"; runs {min(ratios):.4f}–{max(ratios):.4f}" if len(ratios) > 1 else ""
        rows.append([metric, f"{rate:,} KB/s",
                     f"{statistics.median(r['steady_bytes_per_s'] for r in good) / 1000:,.1f} KB/s = "
                     f"{med:.4f} x{spread}", "1.00 ± 1 %", verdict(ok)])
        windows = ", ".join(f"{r['steady_secs']:.2f}" for r in good)
        reads = ", ".join(str(r["steady_reads"]) for r in good)
        details.append(f"| {rate:,} | {', '.join(f'{x:.4f}' for x in ratios)} | {windows} | {reads} |")
    details.append("")

    # 4. throughput under latency
    trials = [t for t in f.res.get("throughput_raw", []) if t]
    lat = f.plan["tp_latency_ms"]
    metric = f"throughput, 1 stream, latency {lat} ms downstream / no toxics"
    unsup = [t for t in trials if t.get("unsupported")]
    tp = {}
    if unsup:
        rows.append([metric, f"latency {lat} ms", f"not supported ({unsup[0]['unsupported']})",
                     ">= 0.8 x no-toxic", "not supported"])
    else:
        ratios = [t["latency"] / t["plain"] for t in trials if t.get("latency") and t.get("plain")]
        if ratios:
            med = statistics.median(ratios)
            ok = med >= 0.8
            lat_mbps = statistics.median(t["latency"] for t in trials if t.get("latency"))
            plain_mbps = statistics.median(t["plain"] for t in trials if t.get("plain"))
            tp = {"ratios": ratios, "median": med, "ok": ok, "latency_mbps": lat_mbps, "plain_mbps": plain_mbps}
            spread = f"; trials {min(ratios):.2f}–{max(ratios):.2f}" if len(ratios) > 1 else ""
            rows.append([metric, f"latency {lat} ms",
                         f"{lat_mbps:,.0f} vs {plain_mbps:,.0f} MB/s = {med:.2f} x{spread}",
                         ">= 0.8 x no-toxic", verdict(ok)])
        else:
            rows.append([metric, f"latency {lat} ms", "no measurement", ">= 0.8 x no-toxic", "n/a"])
    direct_tp = [t["direct"] for t in trials if t.get("direct")]
    plain_tp = [t["plain"] / t["direct"] for t in trials if t.get("direct") and t.get("plain")]
    tp["direct_mbps"] = statistics.median(direct_tp) if direct_tp else None
    tp["plain_of_direct"] = statistics.median(plain_tp) if plain_tp else None
    summary["throughput"] = tp
    details.append("### Throughput trials (MB/s, 10^6 B, steady part)")
    details.append("")
    details.append("| trial | direct | fallacy, no toxics | fallacy, latency | latency / no toxics | other work |")
    details.append("|---|---|---|---|---|---|")
    for i, t in enumerate(trials):
        r = t["latency"] / t["plain"] if t.get("latency") and t.get("plain") else None
        details.append(f"| {i + 1} | {t.get('direct', 0):,.0f} | {t.get('plain', 0):,.0f} | "
                       f"{t.get('latency', 0):,.0f} | {'n/a' if r is None else f'{r:.3f}'} | "
                       f"{t.get('other_work', 0):.0%} |")
    details.append("")

    # reference rows
    ref = ["| reference (same run) | value |", "|---|---|",
           f"| direct one-way delay, 16 B, send to kernel receive stamp (µs) | p50 {dow_med * 1000:,.1f}, "
           f"p99 {q(direct_ow, 0.99) * 1000:,.1f} (n={len(direct_ow)}) |"]
    if plain_ow:
        ref.append(f"| fallacy without toxics, one-way delay added over direct (µs) | "
                   f"p50 {(pow_med - dow_med) * 1000:+,.1f}, p99 {(q(plain_ow, 0.99) - q(direct_ow, 0.99)) * 1000:+,.1f} "
                   f"(n={len(plain_ow)}) |")
    if direct:
        ref.append(f"| direct round trip, 1 conn, 32 B (µs) | p50 {d_med * 1000:,.1f}, p99 {q(direct, 0.99) * 1000:,.1f} "
                   f"(n={len(direct)}) |")
    if plain and direct:
        ref.append(f"| fallacy without toxics, round trip added over direct (µs) | "
                   f"p50 {(p_med - d_med) * 1000:+,.1f}, p99 {(q(plain, 0.99) - q(direct, 0.99)) * 1000:+,.1f} "
                   f"(n={len(plain)}) |")
    if tp.get("direct_mbps"):
        ref.append(f"| direct throughput, 1 stream (MB/s) | {tp['direct_mbps']:,.0f} |")
    if tp.get("plain_of_direct"):
        ref.append(f"| fallacy without toxics, throughput (x direct) | {tp['plain_of_direct']:.2f} |")
    return rows, summary, details, ref


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop repeating measurements after this much time (default 540, quick 100)")
    ap.add_argument("--max-other", type=float, default=0.15,
                    help="redo a measurement (once) when other work used more than this fraction of the CPUs")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(args.config) as fh:
        cfg = json.load(fh)
    f = Fidelity(cfg, args)
    busy0 = cpu_busy(1.0)
    load0 = open("/proc/loadavg").read().split()[:3]
    f.run()
    load1 = open("/proc/loadavg").read().split()[:3]
    rows, summary, details, ref = summarize(f)
    meta = cfg.get("meta", {})
    redone = sum(1 for _, _, kept in f.others if not kept)
    kept = [o for _, o, k in f.others if k]
    head = ["metric", "requested", "observed", "target", "result"]
    table = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    lines = [
        "# fallacy fault fidelity",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- fallacy {meta.get('fallacy_version', '?')}, commit {meta.get('fallacy_commit', '?')}, "
        f"binary built {meta.get('fallacy_built', '?')}; `serve --seed {meta.get('seed', '?')}`",
        f"- machine: {NCPU} CPUs, {platform.platform()}; load average {' '.join(load0)} before, "
        f"{' '.join(load1)} after; {busy0:.0%} busy at the start",
        f"- other work during kept measurements: median {statistics.median(kept) if kept else 0:.0%}, "
        f"max {max(kept) if kept else 0:.0%}; {redone} measurement(s) redone because of it",
        f"- {'--quick' if args.quick else 'full'} mode; measuring took {f.elapsed:.0f} s "
        f"({f.waited:.0f} s of it waiting for the machine)",
        "- loopback only; the direct connection is measured in this same run; latency toxics are on "
        "the upstream stream; delays are one way: client send (CLOCK_REALTIME) to the upstream's kernel "
        "receive timestamp (SO_TIMESTAMPNS)",
        "",
        "\n".join(table),
        "",
        "\n".join(ref),
        "",
    ]
    if f.problems:
        lines += ["## Problems seen", ""] + [f"- {p}" for p in f.problems] + [""]
    lines += ["## Details", ""] + details
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    raw = {k: v for k, v in f.res.items()}
    for r in raw.get("distribution_raw", {}).values():
        r.pop("_cdf", None)
        r.pop("_quantile", None)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
        json.dump({"meta": meta, "summary": summary, "problems": f.problems, "other_work": f.others,
                   "direct_rtt_ms": f.direct_rtt, "plain_rtt_ms": f.plain_rtt,
                   "direct_one_way_ms": f.direct_ow, "plain_one_way_ms": f.plain_ow, "raw": raw,
                   "rows": rows}, fh)
    log(f"wrote {args.out}")
    missed = [r[0] + " " + r[1] for r in rows if r[4] == "MISS"]
    if args.strict and missed:
        log("missed: " + "; ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
