"""A webhook receiver for the tests: a stdlib HTTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A loopback HTTP receiver: verifies each delivery's signature (the documented way),
    answers the statuses it is told to (then 200), or never answers (``hang``)."""

    def __init__(self, secret: str = "", statuses: tuple[int, ...] = (), hang: bool = False):
        self.secrets = [secret] if secret else []
        self.hits = 0
        self.statuses = list(statuses)
        self.hang = hang
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hits += 1
                if receiver.hang:
                    receiver.released.wait(30)
                    return
                if not receiver.verified(self.headers.get("Tooltrail-Signature", ""), body):
                    receiver.bad_signatures += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.received.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def verified(self, header: str, body: bytes, tolerance_s: int = 300) -> bool:
        # As docs/EVENTS.md shows a receiver doing it.
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
        if abs(time.time() - timestamp) > tolerance_s:
            return False  # an old (replayed) delivery
        signed = f"{timestamp}.".encode() + body
        for secret in self.secrets:
            expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, parts["v1"]):
                return True
        return False

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
