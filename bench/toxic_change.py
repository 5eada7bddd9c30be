#!/usr/bin/env python3
"""How fast a toxic change reaches an open connection.

Starts `fallacy serve` (release build), an echo upstream and a client that keeps a ping-pong
going on one open connection. Then, N times: add a `latency` toxic of 200 ms through the API and
time from sending the request until the first round trip that is delayed starts being delayed
(i.e. the change was in force for a chunk read after the request), then remove it. Reports the
p50/p99 of "API request sent -> change in force on the open connection", which is an upper
bound of the propagation time (it includes the HTTP round trip of the API call).

Usage: bench/toxic_change.py [--runs N]   (loopback only; stops everything it started)
"""
import argparse, json, os, socket, statistics, subprocess, sys, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    up = socket.socket(); up.bind(("127.0.0.1", 0)); up.listen(8)
    stop = time.time() + 120

    def echo():
        up.settimeout(1)
        while time.time() < stop:
            try:
                c, _ = up.accept()
            except socket.timeout:
                continue
            def h(c=c):
                c.settimeout(5)
                try:
                    while True:
                        d = c.recv(4096)
                        if not d:
                            return
                        c.sendall(d)
                except OSError:
                    return
            threading.Thread(target=h, daemon=True).start()
    threading.Thread(target=echo, daemon=True).start()

    fallacy = subprocess.Popen([os.path.join(ROOT, "target/release/fallacy"), "serve", "--admin", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        admin = fallacy.stdout.readline().split("http://")[1].strip()
        def api(method, path, body=None):
            req = urllib.request.Request(f"http://{admin}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.read()
        proxy = json.loads(api("POST", "/proxies", {"name": "p", "listen": "127.0.0.1:0",
                                                     "upstream": "%s:%d" % up.getsockname()}))
        host, port = proxy["listen"].rsplit(":", 1)
        c = socket.create_connection((host, int(port)), timeout=5)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(args.runs):
            sent = time.perf_counter()
            threading.Thread(target=api, args=("POST", "/proxies/p/toxics",
                             {"type": "latency", "name": "l", "attributes": {"latency": 200}})).start()
            # Ping until a round trip takes >= 150 ms; its start time is when the change was in force.
            while True:
                start = time.perf_counter()
                c.sendall(b"x"); c.recv(1)
                if time.perf_counter() - start >= 0.15:
                    samples.append(max(0.0, start - sent))
                    break
                if start - sent > 2:
                    sys.exit("the change never reached the connection")
            api("DELETE", "/proxies/p/toxics/l")
        samples.sort()
        p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000
        print(f"toxic change reaches an open connection: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms "
              f"(upper bound: from API request sent; {len(samples)} changes; target <= 10 ms)")
    finally:
        fallacy.terminate()
        fallacy.wait(timeout=10)


if __name__ == "__main__":
    main()
