"""A loopback HTTP proxy in front of moto's S3 server that fails a seeded fraction of requests.

Point a client's endpoint at `FaultyS3Proxy(upstream).url`. Each request is, with probability `rate`, answered
with one of the faults below instead of (or after) being forwarded; the rest pass through unchanged:

    500        HTTP 500 with an S3 <Error><Code>InternalError</Code> body; the request never reaches S3
    503        HTTP 503 SlowDown (S3's throttling answer); the request never reaches S3
    reset      the connection is reset (RST) after the request is read and before it reaches S3
    lost       the request is forwarded (a PUT lands), then the connection is reset: the response is lost

The proxy only forwards to one upstream on 127.0.0.1, every socket has a timeout, and `max_faults` bounds how many
faults it injects, so it cannot hang a test or run away. `requests` logs (method, path, outcome) of every request.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULTS = ("500", "503", "reset", "lost")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_BODIES = {
    "500": b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>"
           b"<Message>We encountered an internal error. Please try again.</Message></Error>",
    "503": b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
           b"<Message>Please reduce your request rate.</Message></Error>",
}


class FaultyS3Proxy:
    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0, kinds: tuple[str, ...] = FAULTS,
                 max_faults: int = 100_000, timeout_s: float = 30.0):
        parsed = urlparse(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost") or not parsed.port:
            raise ValueError(f"upstream {upstream!r} must be http://127.0.0.1:PORT")
        unknown = set(kinds) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULTS}")
        self.upstream = (parsed.hostname, parsed.port)
        self.rate, self.kinds, self.max_faults, self.timeout_s = rate, tuple(kinds), max_faults, timeout_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, outcome: "ok" or a fault kind)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> "FaultyS3Proxy":
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> "FaultyS3Proxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def faults(self) -> Counter:
        """How many faults of each kind were injected so far."""
        with self._lock:
            return Counter(outcome for _, _, outcome in self.requests if outcome != "ok")

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            injected = sum(1 for _, _, o in self.requests if o != "ok")
            outcome = "ok"
            if injected < self.max_faults and self._rng.random() < self.rate:
                outcome = self._rng.choice(self.kinds)
            self.requests.append((method, path, outcome))
            return outcome


def _handler_for(proxy: FaultyS3Proxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 does: a reset also breaks a pooled connection
        timeout = proxy.timeout_s

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self):
            self._handle()

        do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        def _handle(self) -> None:
            body = self._read_body()
            outcome = proxy._decide(self.command, self.path)
            if outcome in ("500", "503"):
                self._send(int(outcome), [("Content-Type", "application/xml")], _BODIES[outcome])
                return
            if outcome == "reset":
                self._reset()
                return
            status, headers, payload = self._forward(body)
            if outcome == "lost":
                self._reset()
                return
            self._send(status, headers, payload)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes):
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.timeout_s)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"expect"}}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
                return resp.status, out, payload
            finally:
                conn.close()

        def _send(self, status: int, headers, payload: bytes) -> None:
            self.send_response(status)
            has_length = False
            for k, v in headers:
                if k.lower() == "content-length":
                    if self.command == "HEAD":  # a HEAD answer names the object's length but carries no body
                        self.send_header(k, v)
                        has_length = True
                    continue
                if k.lower() in ("date", "server"):
                    continue  # send_response wrote its own
                self.send_header(k, v)
            if not has_length:
                self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()

        def _reset(self) -> None:
            """Close with RST (SO_LINGER 0): the client sees a reset, not a clean end of stream."""
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self.close_connection = True
            try:
                self.connection.close()
            except OSError:
                pass

    return Handler
