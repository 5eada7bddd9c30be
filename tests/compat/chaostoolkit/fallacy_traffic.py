"""Real traffic through a proxy that chaostoolkit-toxiproxy created, for experiment.json.

Chaos Toolkit python probes: each function connects to 127.0.0.1:<port>, where <port> is the
environment variable `<proxy_name>_PORT` that the driver's create_proxy / modify_proxy /
enable_proxy actions set from the proxy's `listen` answer, and raises AssertionError when the
traffic is not what the toxics in force should produce (a raising probe is a failed run in the
journal). The upstream is an echo server. Loopback only; every socket has a timeout.
"""

import os
import socket
import time

TIMEOUT_S = 5.0


def _port(proxy_name):
    return int(os.environ[f"{proxy_name}_PORT"])


def _connect(proxy_name):
    s = socket.create_connection(("127.0.0.1", _port(proxy_name)), timeout=TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _payload(size):
    return bytes((i * 7 + 13) % 251 for i in range(size))


def _read_until_close(s, limit):
    """Reads until EOF or a reset (or `limit` bytes more than expected); returns the bytes."""
    got = b""
    while len(got) <= limit:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got


def _ms(start):
    return round((time.monotonic() - start) * 1000.0, 1)


def round_trip(proxy_name, size=64, min_ms=0, max_ms=2000):
    """Sends `size` bytes and reads them back intact within [min_ms, max_ms]."""
    msg = _payload(size)
    with _connect(proxy_name) as s:
        start = time.monotonic()
        s.sendall(msg)
        got = b""
        while len(got) < size:
            chunk = s.recv(65536)
            assert chunk, f"closed after {len(got)} of {size} echoed bytes"
            got += chunk
        took = _ms(start)
    assert got == msg, "the echo came back altered"
    assert min_ms <= took <= max_ms, f"round trip took {took} ms, expected {min_ms}..{max_ms} ms"
    return {"port": _port(proxy_name), "bytes": size, "ms": took}


def answers_within(proxy_name, max_ms=1000):
    """Steady-state form of round_trip: True when a 64-byte echo is back intact in time."""
    try:
        round_trip(proxy_name, 64, 0, max_ms)
        return True
    except (AssertionError, OSError):
        return False


def closes_after(proxy_name, send=64, min_bytes=0, max_bytes=0, min_ms=0, max_ms=3000):
    """Sends `send` bytes, then expects between min_bytes and max_bytes of the echo (a prefix)
    and the connection closed (EOF or reset) within [min_ms, max_ms]."""
    msg = _payload(send)
    with _connect(proxy_name) as s:
        start = time.monotonic()
        try:
            s.sendall(msg)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = _read_until_close(s, max_bytes)
        took = _ms(start)
    assert min_bytes <= len(got) <= max_bytes, (
        f"got {len(got)} bytes before the close, expected {min_bytes}..{max_bytes}"
    )
    assert got == msg[: len(got)], "the bytes before the close were altered"
    assert min_ms <= took <= max_ms, f"closed after {took} ms, expected {min_ms}..{max_ms} ms"
    return {"bytes": len(got), "ms": took}


def eof_delay(proxy_name, size=64, min_ms=0, max_ms=3000):
    """Sends `size` bytes and half-closes; expects the full echo, then EOF within
    [min_ms, max_ms] of the half-close (the echo server closes as soon as it sees EOF)."""
    msg = _payload(size)
    with _connect(proxy_name) as s:
        s.sendall(msg)
        start = time.monotonic()
        s.shutdown(socket.SHUT_WR)
        got = _read_until_close(s, size)
        took = _ms(start)
    assert got == msg, f"got {len(got)} of {size} echoed bytes before EOF"
    assert min_ms <= took <= max_ms, f"EOF came {took} ms after the half-close, expected {min_ms}..{max_ms} ms"
    return {"bytes": len(got), "ms": took}


def refused(proxy_name):
    """Expects nothing to accept connections on the proxy's port (a disabled proxy)."""
    try:
        s = socket.create_connection(("127.0.0.1", _port(proxy_name)), timeout=TIMEOUT_S)
    except ConnectionRefusedError:
        return True
    s.close()
    raise AssertionError(f"127.0.0.1:{_port(proxy_name)} still accepts connections")
