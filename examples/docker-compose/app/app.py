"""The example app: an HTTP service that counts its hits in Redis, reached through fallacy.

GET /  ->  200 {"hits": N, "redis_ms": T}, or 503 {"error": ...} when Redis (as fallacy lets it
through) does not answer within REDIS_TIMEOUT_MS. Standard library only, so the stock
python image runs it.
"""

import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REDIS_HOST, REDIS_PORT = os.environ.get("REDIS_ADDR", "fallacy:16379").rsplit(":", 1)
TIMEOUT = int(os.environ.get("REDIS_TIMEOUT_MS", "200")) / 1000
LISTEN = os.environ.get("LISTEN", "0.0.0.0:8080")


def incr(key):
    """INCR over a fresh connection, in RESP; the reply's integer."""
    with socket.create_connection((REDIS_HOST, int(REDIS_PORT)), timeout=TIMEOUT) as s:
        s.sendall(b"*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(key), key))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            reply += chunk
    if not reply.startswith(b":"):
        raise ConnectionError("unexpected reply %r" % reply)
    return int(reply[1:-2])


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        start = time.monotonic()
        try:
            hits = incr(b"hits")
            status, body = 200, {"hits": hits, "redis_ms": round((time.monotonic() - start) * 1000, 1)}
        except (OSError, ConnectionError) as e:
            status, body = 503, {"error": "redis: %s" % (e or "timed out")}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    host, port = LISTEN.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print("app on http://%s:%d" % server.server_address[:2], flush=True)
    server.serve_forever()
