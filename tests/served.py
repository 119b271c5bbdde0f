"""Talking to a running `transferkit serve` in tests: one HTTP call, and the real CLI started on a free port."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def call(address, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    """(status, parsed JSON or the text) of one request to (host, port, …)."""
    host, port = address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=300)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


@contextlib.contextmanager
def serve_process(*args: str):
    """`python -m transferkit serve ARGS --port P` until the block ends; yields ("127.0.0.1", P)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", *args, "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while True:
            assert process.poll() is None, f"serve exited {process.returncode}: {process.stderr.read()[-3000:]}"
            assert time.time() < deadline, "serve did not start within 5 minutes"
            with contextlib.suppress(OSError):
                if call(("127.0.0.1", port), "GET", "/health")[0] == 200:
                    break
            time.sleep(0.5)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=60)
