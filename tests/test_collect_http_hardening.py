"""The collector's HTTP layer under hostile or sloppy clients, over raw sockets.

* Framing: a request whose body cannot be delimited (conflicting Content-Length, or
  Content-Length with Transfer-Encoding) gets 400 and the connection closes; a body the
  answer did not read (a GET's, a chunked one) is read away or the connection closes, so
  its bytes are never answered as a request of their own (request smuggling).
* Resources: connections past the cap get 503 and are closed without a thread; a client
  must finish its request line and headers (and its body) within a deadline, whatever
  its pace; an honest keep-alive sender (the OTel SDK exporter) keeps working.
* ``Expect: 100-continue`` gets its final 401 / 413 at once, without the 100.
* Every error is a ``google.rpc.Status`` JSON body (also the standard library's own:
  malformed request lines, unknown methods); other methods on known paths get 405 +
  Allow; no answer shows a server path.

Most tests run against a ``tooltrail collect`` subprocess; the connection cap and the
deadlines are set small on a collector started in-process (same server, real sockets).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from collect_support import CollectorProcess, request, wait_until
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tooltrail.collector.server import CollectorConfig, Running, start

TOKEN = "agents-token-0123456789"
DECIDER = "decider-token-0123456789"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """One raw connection: send bytes, read whole answers (status, headers, body)."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self._buf = b""
        self.head_request = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self._buf += chunk
        return bool(chunk)

    def answer(self) -> Answer | None:
        """The next answer, or None when the server closed the connection first."""
        while b"\r\n\r\n" not in self._buf:
            if not self._fill():
                assert not self._buf, f"connection closed inside an answer: {self._buf!r}"
                return None
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
        status = int(status_line.split()[1])
        length = 0 if status in (100, 204) or self.head_request else int(headers["content-length"])
        while len(self._buf) < length:
            assert self._fill(), "connection closed inside a body"
        body, self._buf = self._buf[:length], self._buf[length:]
        return Answer(status, headers, body)

    def answers(self) -> list[Answer]:
        """Every answer until the server closes the connection."""
        out = []
        while (a := self.answer()) is not None:
            out.append(a)
        return out

    def close(self) -> None:
        self.sock.close()


def exchange(address: tuple[str, int], raw: bytes) -> list[Answer]:
    """Send ``raw``, end our side, and collect every answer the server gives to it."""
    conn = Conn(address)
    try:
        conn.send(raw)
        # The server may have answered and closed already (a refused connection): its
        # answer is still in our buffer.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        return conn.answers()
    finally:
        conn.close()


def rpc_message(answer: Answer) -> str:
    """The message of a google.rpc.Status JSON body (fails on anything else, e.g. HTML)."""
    assert answer.headers["content-type"] == "application/json", answer
    doc = json.loads(answer.body)
    assert isinstance(doc["code"], int)
    message = doc["message"]
    assert isinstance(message, str)
    return message


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    data = tmp_path_factory.mktemp("hardening") / "cdata"
    with CollectorProcess(
        data, "--token", TOKEN, "--decision-token", DECIDER, "--workers", "0"
    ) as proc:
        yield proc


def addr(col: CollectorProcess) -> tuple[str, int]:
    return ("127.0.0.1", col.port)


SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


# --- framing (finding 3) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 2\r\nContent-Length: 50\r\n",
        b"Content-Length: 2, 50\r\n",
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: +2\r\n",
        # The stdlib parser stops at a malformed line and hides the headers after it.
        b"Content-Length : 2\r\n",
        b"X-Junk : 1\r\nContent-Length: 2\r\n",
        b"NoColonHere\r\nContent-Length: 2\r\n",
        b"X-Folded: a\r\n Content-Length: 2\r\n",
        b"X-A: 1\rContent-Length: 2\r\n",  # a bare CR: the parser splits the line there
    ],
    ids=[
        "two-headers",
        "list",
        "with-chunked",
        "signed",
        "space",
        "junk",
        "no-colon",
        "fold",
        "bare-cr",
    ],
)
def test_ambiguous_length_is_400_and_closes(col: CollectorProcess, framing: bytes) -> None:
    raw = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + framing + b"\r\n{}"
    answers = exchange(addr(col), raw + SMUGGLED)
    assert [a.status for a in answers] == [400]  # the smuggled GET is never answered
    assert answers[0].headers["connection"] == "close"
    assert "cannot be delimited" in rpc_message(answers[0])


def test_a_well_formed_request_of_an_unsupported_type_is_415_not_malformed(
    col: CollectorProcess,
) -> None:
    # The stdlib's header parser records "defects" for a multipart Content-Type with no
    # body to parse: the header lines themselves are fine, so this is the media type's 415.
    for media in (b"multipart/form-data; boundary=xyz", b"message/rfc822"):
        raw = (
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
            + AUTH.encode()
            + b"Content-Type: "
            + media
            + b"\r\nContent-Length: 2\r\n\r\n{}"
        )
        answers = exchange(addr(col), raw)
        assert [a.status for a in answers] == [415], media


def test_identical_repeated_content_length_is_one_length(col: CollectorProcess) -> None:
    raw = b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"
    answers = exchange(addr(col), raw + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [a.status for a in answers] == [404, 200]


def test_get_body_is_read_away_not_answered(col: CollectorProcess) -> None:
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
    sentinel = b"GET /sentinel HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = exchange(addr(col), get + SMUGGLED + sentinel)
    # The body was dropped and the connection went on with the next real request.
    assert [a.status for a in answers] == [200, 404]
    assert json.loads(answers[0].body)["status"] == "ok"
    assert "/sentinel" in rpc_message(answers[1])


def test_large_get_body_is_left_and_the_connection_closes(col: CollectorProcess) -> None:
    body = b"x" * (256 * 1024)
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    conn = Conn(addr(col))
    try:
        conn.send(get)
        first = conn.answer()
        assert first is not None and first.status == 200
        assert first.headers["connection"] == "close"
        assert conn.answer() is None
    finally:
        conn.close()


@pytest.mark.parametrize("path", [b"/nope", b"/v1/traces", b"/healthz"])
def test_chunked_body_never_read_closes(col: CollectorProcess, path: bytes) -> None:
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    raw = b"POST %s HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n\r\n" % (
        path,
        AUTH.encode(),
    )
    answers = exchange(addr(col), raw + chunk)
    assert len(answers) == 1, [a.status for a in answers]  # no answer to the chunk lines
    assert answers[0].status in (404, 405, 411)
    assert answers[0].headers["connection"] == "close"
    rpc_message(answers[0])


# --- Expect: 100-continue (finding 5) -------------------------------------------------------


def _expect(conn: Conn, auth: str, length: int) -> Answer | None:
    conn.send(
        (
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            f"{auth}Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
    )
    return conn.answer()


@pytest.mark.parametrize(
    ("auth", "length", "status"),
    [("", 2, 401), (AUTH, 999_999_999, 413), ("Authorization: Bearer wrong\r\n", 2, 401)],
    ids=["no-token", "too-large", "wrong-token"],
)
def test_expect_continue_gets_the_refusal_without_a_100(
    col: CollectorProcess, auth: str, length: int, status: int
) -> None:
    conn = Conn(addr(col))
    try:
        first = _expect(conn, auth, length)  # the body is never sent
        assert first is not None and first.status == status
        assert first.headers["connection"] == "close"
        assert conn.answer() is None
    finally:
        conn.close()


def test_expect_continue_with_a_good_request_gets_100_then_200(col: CollectorProcess) -> None:
    conn = Conn(addr(col))
    try:
        first = _expect(conn, AUTH, 2)
        assert first is not None and first.status == 100
        conn.send(b"\x0a\x00")  # an empty ResourceSpans: valid, nothing to land
        final = conn.answer()
        assert final is not None and final.status == 200
    finally:
        conn.close()


# --- methods and error bodies (finding 6) ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/traces", "POST, OPTIONS"),
        ("DELETE", "/v1/traces", "POST, OPTIONS"),
        ("PATCH", "/v1/approvals", "GET, HEAD, POST, OPTIONS"),
        ("GET", "/v1/traces", "POST, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
        ("GET", "/v1/approvals/abc/decision", "POST, OPTIONS"),
    ],
)
def test_other_method_on_a_known_path_is_405_with_allow(
    col: CollectorProcess, method: str, path: str, allow: str
) -> None:
    status, headers, body = request(col.url, method, path, b"{}", {"Content-Type": "x"})
    assert status == 405
    assert headers["allow"] == allow
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["message"].startswith(f"{method} is not allowed on {path}")


def test_options_and_head(col: CollectorProcess) -> None:
    status, headers, body = request(col.url, "OPTIONS", "/v1/traces")
    assert (status, headers["allow"], body) == (204, "POST, OPTIONS", b"")
    status, headers, body = request(col.url, "HEAD", "/healthz")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0  # the length the GET's body would have
    # HEAD is answered without a body, so the next answer on the connection is intact.
    conn = Conn(addr(col))
    conn.head_request = True
    try:
        conn.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (a := conn.answer()) is not None and a.status == 200
        conn.head_request = False
        conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (a := conn.answer()) is not None and a.status == 404
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"GARBAGE\r\n\r\n", 400, "Bad request syntax"),
        (b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", 501, "Unsupported method"),
        (b"GET / HTTP/7.0\r\nHost: x\r\n\r\n", 505, "version"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 120 + b"\r\n", 431, "Too many headers"),
    ],
    ids=["syntax", "method", "version", "headers"],
)
def test_protocol_errors_are_rpc_status_json(
    col: CollectorProcess, raw: bytes, status: int, words: str
) -> None:
    answers = exchange(addr(col), raw)
    assert [a.status for a in answers] == [status]
    assert answers[0].headers["connection"] == "close"
    assert words.lower() in rpc_message(answers[0]).lower()


def test_answers_show_no_server_path(col: CollectorProcess) -> None:
    data = str(col.data_dir)
    status, _, body = request(col.url, "GET", "/healthz")
    doc = json.loads(body)
    assert status == 200 and "data_dir" not in doc
    unknown = [
        request(col.url, "GET", "/v1/approvals/nope", headers={"Authorization": f"Bearer {TOKEN}"}),
        request(
            col.url,
            "POST",
            "/v1/approvals/nope/decision",
            json.dumps({"outcome": "approved", "by": "amy"}).encode(),
            {"Authorization": f"Bearer {DECIDER}"},
        ),
    ]
    for status, _, body in unknown:
        assert status == 404
        message = json.loads(body)["message"]
        assert message == "no approval request 'nope'"
        assert data not in message and "control.sqlite" not in message


# --- connection cap and deadlines (finding 4) ------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Running]:
    cfg = CollectorConfig(
        tmp_path / "data",
        port=0,
        token=TOKEN,
        workers=0,
        max_connections=4,
        header_timeout_s=0.6,
    )
    running = start(cfg)
    try:
        yield running
    finally:
        running.stop()


def _saddr(running: Running) -> tuple[str, int]:
    host, port = running.server.server_address[:2]
    return (str(host), int(port))


def _open_connections(running: Running) -> float:
    return running.collector.metrics.get("open_connections")


TRACE_POST = (
    f"POST /v1/traces HTTP/1.1\r\nHost: x\r\n{AUTH}"
    "Content-Type: application/x-protobuf\r\nContent-Length: 2\r\n\r\n"
).encode() + b"\x0a\x00"


def test_connections_over_the_cap_get_503_and_close(small: Running) -> None:
    idle = [Conn(_saddr(small)) for _ in range(4)]
    try:
        for conn in idle:  # half a request each, like the slowloris repro
            conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        wait_until(lambda: _open_connections(small) == 4, timeout=5, what="4 connections")
        # The fifth is answered on accept, before it sends anything, and closed.
        fifth = Conn(_saddr(small))
        try:
            answers = fifth.answers()
        finally:
            fifth.close()
        assert [a.status for a in answers] == [503]
        assert answers[0].headers["retry-after"] == "1"
        assert answers[0].headers["connection"] == "close"
        assert "too many connections" in rpc_message(answers[0])
        assert small.collector.metrics.get("connections_refused_total") == 1
        assert _open_connections(small) == 4
    finally:
        for conn in idle:
            conn.close()
    # Slots come back as connections end: the sender gets through on its retry.
    wait_until(lambda: _open_connections(small) == 0, timeout=5, what="slots released")
    assert [a.status for a in exchange(_saddr(small), TRACE_POST)] == [200]


def _trickle_until_closed(conn: Conn, data: bytes, limit_s: float) -> float | None:
    """Send ``data`` a byte every 0.1 s; seconds until the server closed, None if never."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > limit_s:
            return None
        try:
            conn.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        readable, _, _ = select.select([conn.sock], [], [], 0.1)
        if readable and conn.answer() is None:
            return time.monotonic() - started
    return None


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_client_is_cut_off_at_the_deadline(small: Running, phase: str) -> None:
    headers = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
    body_head = (
        f"POST /v1/traces HTTP/1.1\r\nHost: x\r\n{AUTH}"
        "Content-Type: application/x-protobuf\r\nContent-Length: 500\r\n\r\n"
    ).encode()
    conn = Conn(_saddr(small))
    try:
        if phase == "body":
            conn.send(body_head)
        # Every read gets a byte within 0.1 s, far inside the 60 s per-read timeout: only
        # a deadline for the whole phase (0.6 s + 500 B at 64 KiB/s) ends it.
        data = headers if phase == "headers" else b"\0" * 500
        closed_after = _trickle_until_closed(conn, data, limit_s=8)
    finally:
        conn.close()
    assert closed_after is not None and closed_after < 3.0
    wait_until(lambda: _open_connections(small) == 0, timeout=5, what="slot released")


class _Counting(SpanExporter):
    def __init__(self, inner: OTLPSpanExporter) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_keep_alive_sender_survives_the_idle_timeout(small: Running) -> None:
    host, port = _saddr(small)
    exporter = _Counting(
        OTLPSpanExporter(
            endpoint=f"http://{host}:{port}/v1/traces",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
    )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("hardening")
    try:
        for pause in (0.0, 0.2, 1.5, 0.2):  # 1.5 s: past the 0.6 s idle timeout
            time.sleep(pause)
            with tracer.start_as_current_span("execute_tool git_status"):
                pass
    finally:
        provider.shutdown()
    assert exporter.results == [SpanExportResult.SUCCESS] * 4
    assert small.collector.metrics.get("spans_accepted_total") == 4


def test_paths_are_scrubbed_from_health_and_errors(small: Running) -> None:
    data = small.collector.data_dir.resolve()
    collector = small.collector
    assert collector.public(f"cannot write {data}/spans/x.parquet") == (
        "cannot write <data>/spans/x.parquet"
    )
    collector.last_landing_error = f"seg-1.wal: [Errno 28] No space left: '{data}/spans/x'"
    try:
        answers = exchange(_saddr(small), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        collector.last_landing_error = None
    assert [a.status for a in answers] == [503]
    doc = json.loads(answers[0].body)
    assert doc["landing_error"] == "seg-1.wal: [Errno 28] No space left: '<data>/spans/x'"
    assert str(data) not in answers[0].body.decode()


def test_waiting_long_polls_and_idle_connections_stay_within_the_file_limit(
    tmp_path: Path,
) -> None:
    # Long-polls keep the control store open (its database, WAL and shared-memory files)
    # while they wait: with every waiter slot and every connection taken, the collector
    # must still have a file to accept and refuse the next connection (503, not a hang).
    max_files = 256
    with CollectorProcess(tmp_path / "data", "--workers", "0", max_files=max_files) as col:
        assert col.proc is not None
        status, _, filed = request(
            col.url,
            "POST",
            "/v1/approvals",
            json.dumps({"tool_name": "deploy", "arguments": {}, "timeout_s": 60}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 201, filed
        approval_id = json.loads(filed)["approval_id"]
        address = ("127.0.0.1", col.port)
        cap = (max_files - 64) // 2
        conns: list[Conn] = []
        try:
            for _ in range(cap // 4):  # every waiter slot
                conn = Conn(address)
                conn.send(
                    f"GET /v1/approvals/{approval_id}?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                )
                conns.append(conn)
            while len(conns) < cap:  # and every other connection, half a request each
                conn = Conn(address)
                conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                conns.append(conn)
            wait_until(
                lambda: len(list(Path(f"/proc/{col.proc.pid}/fd").iterdir())) >= cap,  # type: ignore[union-attr]
                timeout=10,
                what="every connection accepted",
            )
            time.sleep(0.5)
            used = len(list(Path(f"/proc/{col.proc.pid}/fd").iterdir()))
            assert used < max_files - 8, used
            # A refused connection is answered 503 at once, not left hanging. (The refusal
            # closes as soon as it is sent; if our request reaches the server after that,
            # the reset can destroy the 503 in flight, so a few probes are allowed.)
            wait_until(
                lambda: [a.status for a in exchange(address, TRACE_POST)] == [503],
                timeout=5,
                what="a connection over the cap answered 503",
            )
        finally:
            for conn in conns:
                conn.close()
        wait_until(
            lambda: [a.status for a in exchange(address, TRACE_POST)] == [200],
            timeout=10,
            what="a sender gets through once connections end",
        )
