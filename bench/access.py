"""What access control costs: scrypt per credential, and per HTTP request to the collector.

    python bench/access.py [--requests 300]

Measures, in one run: hashing a credential (``users add`` / ``rotate``), a full
verification (``tooltrail approve``: once per command), the collector's cached check
(``CredentialCache``: a row read per request, scrypt once per process), and the median
latency of ``GET /v1/approvals`` from one in-process collector with a shared token and
one with access control, interleaved, so the ratio is what the credential check adds.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tooltrail import access
from tooltrail.collector.server import CollectorConfig, Running, start

TOKEN = "bench-shared-token-0123456789"


def _median_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _getter(running: Running, token: str) -> Callable[[], None]:
    """One request on a fresh connection (a kept-alive one measures TCP's delayed ACK)."""
    parts = urlsplit(running.url)

    def get() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request("GET", "/v1/approvals", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
        finally:
            conn.close()

    return get


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain_dir, guarded_dir = Path(tmp) / "plain", Path(tmp) / "guarded"
        with access.AccessStore(guarded_dir) as store:
            _, credential = store.add("admin", "user", "admin", by=None)
        hashing = _median_ms(lambda: access.hash_credential(credential), 5)
        print(f"hash a credential (scrypt N=2^14 r=8 p=1): {hashing:.1f} ms")
        with access.AccessStore(guarded_dir) as store:
            full = _median_ms(lambda: store.authenticate(credential), 5)
            opened = _median_ms(lambda: access.AccessStore(guarded_dir).close(), 200)
            cache = access.CredentialCache()
            cache.authenticate(store, credential)
            cached = _median_ms(lambda: cache.authenticate(store, credential), 200)
        print(f"full verification (CLI, once per command): {full:.1f} ms")
        print(f"open the access store (collector, per request): {opened * 1000:.0f} us")
        print(f"cached check (collector, per request: row read + HMAC): {cached * 1000:.0f} us")
        plain = start(CollectorConfig(plain_dir, port=0, token=TOKEN, workers=0))
        guarded = start(CollectorConfig(guarded_dir, port=0, workers=0))
        try:
            get_plain, get_guarded = _getter(plain, TOKEN), _getter(guarded, credential)
            get_guarded()  # the first request pays scrypt once
            rounds = [
                (_median_ms(get_plain, 20), _median_ms(get_guarded, 20))
                for _ in range(args.requests // 20)
            ]
        finally:
            plain.stop()
            guarded.stop()
    p = statistics.median(r[0] for r in rounds)
    g = statistics.median(r[1] for r in rounds)
    print(f"GET /v1/approvals median: shared token {p:.2f} ms, access control {g:.2f} ms")
    print(f"  ratio access control / shared token: x{g / p:.2f}")


if __name__ == "__main__":
    main()
