"""Client-side helpers for tests that misbehave as clients: raw sockets that hang up, polling."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable


def raw_request(port: int, body: dict[str, object], path: str = "/api/chat") -> socket.socket:
    """A POST on a fresh connection, left open: the caller reads from it and hangs up when it likes."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n" % path.encode()
                 + b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def wait_for(condition: Callable[[], object], seconds: float = 20.0) -> bool:
    """Poll `condition()` until it holds; the bound only detects a hang."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def first_line(sock: socket.socket) -> bytes:
    """Read until the first NDJSON line of the body has arrived."""
    data = b""
    while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[-1].count(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data
