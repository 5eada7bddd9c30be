#!/usr/bin/env python3
"""A load command for the scenario tests: GETs through the proxy in FALLACY_PROXY_API, one
after another on a new connection each, until stopped or for at most argv[1] seconds."""
import os
import sys
import time
import urllib.request

addr = os.environ["FALLACY_PROXY_API"]
deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
sent = 0
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://{addr}/item/{sent}", timeout=5) as r:
            r.read()
    except OSError as e:
        print("error:", e, flush=True)
    sent += 1
print("requests:", sent, flush=True)
