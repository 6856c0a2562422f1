"""``POST /v1/traces`` against a real collector: status codes, bad input, limits, tokens.

Every bad request gets its status (400 / 401 / 411 / 413 / 415 / 503), lands nothing, and
the server keeps serving. Property tests throw generated bodies (random bytes, random
JSON, bit-flipped valid requests) at one collector; afterwards the rows on disk are
exactly the spans its 200 answers accepted.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collect_support import (
    CollectorProcess,
    collect_argv,
    landed_rows,
    metric,
    post_traces,
    request,
    wait_until,
)
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client.parser import text_string_to_metric_families

from tooltrail.collector.server import CollectorConfig, Running, start

PB = "application/x-protobuf"
JS = "application/json"
TOKEN = "s3cret-token-0123456789"
MAX_BODY = 256 * 1024
_seq = iter(range(1, 10**9))


def make_request(n: int = 3, *, attrs: dict[str, str] | None = None) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for _ in range(n):
        k = next(_seq)
        span = scope.spans.add()
        span.trace_id = k.to_bytes(16, "big")
        span.span_id = k.to_bytes(8, "big")
        span.name = "execute_tool git_status"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + k
        span.end_time_unix_nano = 1_700_000_000_100_000_000 + k
        for key, value in {"gen_ai.tool.name": "git_status", **(attrs or {})}.items():
            span.attributes.add(key=key, value=AnyValue(string_value=value))
    return req


def as_json(req: ExportTraceServiceRequest) -> bytes:
    doc = json_format.MessageToDict(req)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId"):
                    import base64

                    span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(doc).encode()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, by hand (the library refuses to build these)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deeply_nested_request(depth: int) -> bytes:
    """One valid span plus an attribute whose AnyValue kvlists nest ``depth`` levels."""
    value = _field(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        key_value = _field(1, b"k") + _field(2, value)  # KeyValue{key, value}
        value = _field(6, _field(1, key_value))  # AnyValue.kvlist_value.values
    span = make_request(1).resource_spans[0].scope_spans[0].spans[0].SerializeToString()
    span += _field(9, _field(1, b"deep") + _field(2, value))  # Span.attributes
    return _field(1, _field(2, _field(2, span)))  # resource_spans.scope_spans.spans


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    data = tmp_path_factory.mktemp("http") / "data"
    with CollectorProcess(
        data, "--max-body", str(MAX_BODY), "--flush-interval", "0.05", "--token", TOKEN
    ) as proc:
        yield proc


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post(col: CollectorProcess, body: bytes, ctype: str = PB, **headers: str) -> Any:
    return post_traces(col.url, body, ctype, {**AUTH, **headers})


def accepted_total(col: CollectorProcess) -> float:
    return metric(col.url, "spans_accepted_total")


def assert_alive_and_unchanged(col: CollectorProcess, accepted_before: float) -> None:
    status, _, _ = request(col.url, "GET", "/healthz")
    assert status == 200
    assert accepted_total(col) == accepted_before


# --- status codes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ctype", "headers", "status"),
    [
        (b"\x0a\xff\xff\xff\xff\x0f", PB, {}, 400),  # truncated length-delimited field
        (b"{not json", JS, {}, 400),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', JS, {}, 400),
        (b"[1, 2]", JS, {}, 400),
        (b"hello", "text/plain", {}, 415),
        (b"hello", PB, {"Content-Encoding": "br"}, 415),
        (b"\x1f\x8b\x08\x00garbage", PB, {"Content-Encoding": "gzip"}, 400),
        (gzip.compress(b"x" * 100)[:-9], PB, {"Content-Encoding": "gzip"}, 400),  # truncated
        (b"x" * (MAX_BODY + 1), PB, {}, 413),
        (b"[" * 50_000 + b"]" * 50_000, JS, {}, 400),
    ],
    ids=[
        "bad-protobuf",
        "bad-json",
        "bad-hex-id",
        "json-not-object",
        "content-type",
        "encoding",
        "bad-gzip",
        "truncated-gzip",
        "oversize",
        "json-deep",
    ],
)
def test_bad_request_is_refused_and_lands_nothing(
    col: CollectorProcess, body: bytes, ctype: str, headers: dict[str, str], status: int
) -> None:
    before = accepted_total(col)
    got, _, resp = post(col, body, ctype, **headers)
    assert got == status, resp
    assert resp  # a google.rpc.Status saying why
    assert_alive_and_unchanged(col, before)


def test_error_body_is_encoded_like_the_request(col: CollectorProcess) -> None:
    status, headers, body = post(col, b"{oops", JS)
    assert status == 400 and headers["content-type"] == JS
    assert json.loads(body)["message"].startswith("malformed JSON")
    status, headers, body = post(col, b"\x0a\xff", PB)
    assert status == 400 and headers["content-type"] == PB
    assert b"malformed protobuf" in body


def test_deeply_nested_protobuf_is_refused(col: CollectorProcess) -> None:
    before = accepted_total(col)
    status, _, body = post(col, deeply_nested_request(300))
    assert status == 400
    assert b"malformed protobuf" in body
    assert_alive_and_unchanged(col, before)
    # Nesting within the decoder's limit is data like any other: it lands.
    assert post(col, deeply_nested_request(20))[0] == 200
    assert accepted_total(col) == before + 1


def test_missing_or_wrong_token_is_401(col: CollectorProcess) -> None:
    body = make_request(2).SerializeToString()
    before = accepted_total(col)
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
    ):
        status, resp_headers, _ = post_traces(col.url, body, PB, headers)
        assert status == 401
        assert resp_headers["www-authenticate"].startswith("Bearer")
    assert_alive_and_unchanged(col, before)
    status, _, _ = post(col, body)
    assert status == 200
    assert accepted_total(col) == before + 2


def test_partial_success_for_invalid_spans(col: CollectorProcess) -> None:
    """Spans that cannot land are counted as rejected; the request's good spans land."""
    req = make_request(2)
    good = {s.span_id.hex() for s in req.resource_spans[0].scope_spans[0].spans}
    bad_id = make_request(1)
    bad_id.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x00" * 8
    req.resource_spans.extend(bad_id.resource_spans)
    status, _, body = post(col, req.SerializeToString())
    assert status == 200
    resp = ExportTraceServiceResponse.FromString(body)
    assert resp.partial_success.rejected_spans == 1
    assert "spanId" in resp.partial_success.error_message
    wait_until(lambda: good <= {r["span_id"] for r in landed_rows(col.data_dir)}, what="landed")
    assert not {r["span_id"] for r in landed_rows(col.data_dir)} & {"0" * 16}


def test_json_spans_with_ids_of_the_wrong_length_are_rejected_alone(
    col: CollectorProcess,
) -> None:
    # As with protobuf: a hex id of the wrong length (or none) rejects that span only;
    # only an id that is not hex at all makes the JSON body unmappable (400).
    doc = json.loads(as_json(make_request(3)))
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    good = spans[0]["spanId"]
    spans[1]["spanId"] = "1234"
    spans[2]["spanId"] = ""
    status, _, body = post(col, json.dumps(doc).encode(), JS)
    assert status == 200, body
    partial = json.loads(body)["partialSuccess"]
    assert partial["rejectedSpans"] == "2" and "spanId" in partial["errorMessage"]
    wait_until(lambda: good in {r["span_id"] for r in landed_rows(col.data_dir)}, what="landed")
    status, _, body = post(col, b"{}", JS)  # the empty request of the OTLP spec
    assert (status, json.loads(body)) == (200, {})


def test_huge_attribute_span_rejected_whole_request_lands_nothing(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "data", "--flush-interval", "0.05") as small:
        # The default span limit is 1 MiB: a 2 MiB attribute value is over it.
        req = make_request(1, attrs={"gen_ai.tool.call.arguments": "y" * (2 * 1024 * 1024)})
        status, _, body = post_traces(small.url, req.SerializeToString(), PB)
        assert status == 200
        assert ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans == 1
        assert metric(small.url, "spans_accepted_total") == 0
        status, _, body = post_traces(small.url, as_json(make_request(2)), JS)
        assert status == 200 and json.loads(body) == {}
        wait_until(lambda: len(landed_rows(small.data_dir)) == 2, what="good spans landed")


@pytest.mark.parametrize("as_protobuf", [True, False])
def test_span_size_limit_rejects_only_the_oversized_span(as_protobuf: bool) -> None:
    """Per-span sizing is skipped only when the whole body is within the limit."""
    from tooltrail.collector.receiver import validate

    req = make_request(3)
    req.resource_spans.extend(make_request(1, attrs={"big": "y" * 5000}).resource_spans)
    body = req.SerializeToString()
    accepted = validate(req, body if as_protobuf else None, max_span_bytes=4096)
    assert (accepted.spans, accepted.rejected) == (3, 1)
    assert "resourceSpans[1].scopeSpans[0].spans[0]" in accepted.error_message
    assert "over the 4096-byte limit" in accepted.error_message
    small = make_request(3)
    within = validate(small, small.SerializeToString(), max_span_bytes=len(body))
    assert (within.spans, within.rejected) == (3, 0)


def test_gzip_json_and_protobuf_land(col: CollectorProcess) -> None:
    a, b = make_request(3), make_request(2)
    want = {s.span_id.hex() for r in (a, b) for s in r.resource_spans[0].scope_spans[0].spans}
    assert (
        post(col, gzip.compress(a.SerializeToString()), PB, **{"Content-Encoding": "gzip"})[0]
        == 200
    )
    assert post(col, gzip.compress(as_json(b)), JS, **{"Content-Encoding": "gzip"})[0] == 200
    wait_until(lambda: want <= {r["span_id"] for r in landed_rows(col.data_dir)}, what="landed")


def test_metrics_and_health(col: CollectorProcess) -> None:
    status, headers, body = request(col.url, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    for name in (
        "spans_received_total",
        "spans_accepted_total",
        "spans_landed_total",
        "spans_rejected_total",
        "requests_shed_total",
        "spool_backlog_bytes",
    ):
        assert f"# TYPE tooltrail_collector_{name} " in text
    status, _, body = request(col.url, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert request(col.url, "GET", "/nope")[0] == 404


# --- property tests ----------------------------------------------------------------------

_valid = make_request(4).SerializeToString()


def _flip(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p % len(out)] ^= 1 << (p % 8)
    return bytes(out)


bodies = st.one_of(
    st.tuples(st.binary(max_size=2048), st.just(PB)),
    st.tuples(
        st.lists(st.integers(0, 10_000), min_size=1, max_size=8).map(lambda ps: _flip(_valid, ps)),
        st.just(PB),
    ),
    st.tuples(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        ["resourceSpans", "scopeSpans", "spans", "traceId", "spanId", "name", "x"]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=30,
        ).map(lambda d: json.dumps(d).encode()),
        st.just(JS),
    ),
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=bodies)
def test_generated_bodies_never_land_more_than_acknowledged(
    col: CollectorProcess, case: tuple[bytes, str]
) -> None:
    body, ctype = case
    before = accepted_total(col)
    status, _, resp = post(col, body, ctype)
    assert status in (200, 400), (status, resp)
    after = accepted_total(col)
    if status == 400:
        assert after == before
    else:
        assert after >= before


def test_landed_rows_equal_acknowledged_spans(col: CollectorProcess) -> None:
    """Runs after the property test in file order: the disk holds exactly what was acked."""
    wait_until(lambda: metric(col.url, "spool_backlog_bytes") == 0, what="spool drained")
    rows = landed_rows(col.data_dir)
    # Not unique by id: a bit-flipped body can repeat span ids, and what is sent is kept.
    assert len(rows) == accepted_total(col) > 0


# --- process-level refusals --------------------------------------------------------------


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*collect_argv(), *args], capture_output=True, text=True, timeout=timeout)


def test_non_loopback_bind_without_token_is_refused(tmp_path: Path) -> None:
    done = _run("--data", str(tmp_path / "d"), "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert "non-loopback" in done.stderr and "--token" in done.stderr


def test_short_token_is_refused(tmp_path: Path) -> None:
    done = _run("--data", str(tmp_path / "d"), "--port", "0", "--token", "short")
    assert done.returncode == 2
    assert "--token must be at least 16 characters" in done.stderr


def test_an_empty_token_is_refused_not_read_as_no_token(tmp_path: Path) -> None:
    # `--token "$TOKEN"` with TOKEN unset must not start a collector anyone local can use.
    for option in ("--token", "--decision-token"):
        done = _run("--data", str(tmp_path / "d"), "--port", "0", option, "")
        assert done.returncode == 2, done.stderr
        assert option in done.stderr and "is empty" in done.stderr
    # The same through the environment (click reads an empty variable as unset): an
    # empty decision token would let the agents' token approve their own calls.
    for env in ("TOOLTRAIL_COLLECTOR_TOKEN", "TOOLTRAIL_COLLECTOR_DECISION_TOKEN"):
        for value in ("", " "):
            done = subprocess.run(
                [*collect_argv(), "--data", str(tmp_path / "d"), "--port", "0"],
                capture_output=True,
                text=True,
                timeout=30,
                env={
                    **os.environ,
                    "TOOLTRAIL_COLLECTOR_TOKEN": "agents-token-0123456789",
                    env: value,
                },
            )
            assert done.returncode == 2 and f"${env}" in done.stderr, (value, done.stderr)
    assert not (tmp_path / "d").exists()


def test_second_instance_on_same_data_is_refused(col: CollectorProcess) -> None:
    done = _run("--data", str(col.data_dir), "--port", "0")
    assert done.returncode == 2
    assert "another tooltrail collect already serves" in done.stderr
    assert request(col.url, "GET", "/healthz")[0] == 200


def test_full_backlog_answers_503_with_retry_after(tmp_path: Path) -> None:
    with CollectorProcess(
        tmp_path / "data", "--max-backlog", "4096", "--flush-interval", "3600"
    ) as proc:
        first = make_request(40)
        assert post_traces(proc.url, first.SerializeToString(), PB)[0] == 200
        status, headers, _ = post_traces(proc.url, make_request(3).SerializeToString(), PB)
        assert status == 503
        assert int(headers["retry-after"]) >= 1
        assert metric(proc.url, "requests_shed_total") == 1
        assert metric(proc.url, "spans_accepted_total") == 40
        assert proc.stop() == 0  # SIGTERM drains the spool before exiting
    assert len(landed_rows(tmp_path / "data")) == 40


# --- integers past Python's digit limit --------------------------------------------------

HUGE = "9" * 5000  # past CPython's 4,300-digit int conversion limit


def test_huge_json_integer_in_traces_is_a_400_naming_the_field(col: CollectorProcess) -> None:
    doc = json.loads(as_json(make_request(1)))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"][0]["value"] = {"intValue": 0}
    body = json.dumps(doc).replace('"intValue": 0', f'"intValue": {HUGE}').encode()
    before = accepted_total(col)
    status, _, answer = post(col, body, JS)
    assert status == 400, answer
    message = json.loads(answer)["message"]
    assert "attributes[0].value.intValue" in message and "5000 digits" in message
    assert HUGE not in message
    assert_alive_and_unchanged(col, before)


def test_huge_json_integer_in_an_approval_request_is_a_400_naming_the_field(
    col: CollectorProcess,
) -> None:
    body = f'{{"tool": "git_push", "timeout_s": {HUGE}}}'.encode()
    status, _, answer = request(
        col.url, "POST", "/v1/approvals", body, {**AUTH, "Content-Type": JS}
    )
    assert status == 400, answer
    assert "timeout_s" in json.loads(answer)["message"]


# --- invalid UTF-8 in one protobuf string -----------------------------------------------


def _with_bad_utf8(req: ExportTraceServiceRequest, marker: str) -> bytes:
    """The request's encoding with ``marker`` (a string set in it) made invalid UTF-8, at
    the same length: the library refuses to encode such a string itself."""
    body = req.SerializeToString()
    assert body.count(marker.encode()) == 1
    return body.replace(marker.encode(), marker.encode()[:-2] + b"\xff\xfe")


def test_invalid_utf8_in_one_span_rejects_that_span_alone(col: CollectorProcess) -> None:
    req = make_request(4)
    spans = req.resource_spans[0].scope_spans[0].spans
    spans[1].attributes.add(key="note", value=AnyValue(string_value="bad-utf8-here"))
    spans[2].name = "bad-name-too"
    good = {spans[0].span_id.hex(), spans[3].span_id.hex()}
    body = _with_bad_utf8(req, "bad-utf8-here")
    body = body.replace(b"bad-name-too", b"bad-name-t\xc3\x28")
    status, _, answer = post(col, body)
    assert status == 200, answer
    partial = ExportTraceServiceResponse.FromString(answer).partial_success
    assert partial.rejected_spans == 2
    assert "spans[1]" in partial.error_message and "UTF-8" in partial.error_message
    assert spans[1].span_id.hex() in partial.error_message
    wait_until(lambda: good <= {r["span_id"] for r in landed_rows(col.data_dir)}, what="landed")
    bad = {spans[1].span_id.hex(), spans[2].span_id.hex()}
    assert not bad & {r["span_id"] for r in landed_rows(col.data_dir)}


def test_invalid_utf8_in_a_resource_costs_only_that_resources_spans(
    col: CollectorProcess,
) -> None:
    req = make_request(2)
    other = make_request(3).resource_spans[0]
    other.resource.attributes.add(key="host", value=AnyValue(string_value="bad-host-name"))
    req.resource_spans.append(other)
    body = _with_bad_utf8(req, "bad-host-name")
    status, _, answer = post(col, body)
    assert status == 200, answer
    assert ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans == 3
    good = {s.span_id.hex() for s in req.resource_spans[0].scope_spans[0].spans}
    wait_until(lambda: good <= {r["span_id"] for r in landed_rows(col.data_dir)}, what="landed")


def test_a_bad_utf8_request_too_costly_to_salvage_is_a_clear_400(col: CollectorProcess) -> None:
    """Salvaging walks the wire format in Python on the request's thread: 16 MiB of
    one-byte unknown fields beside one bad string held the GIL 3.8 s. Past the field
    budget the request is refused whole, with a 400 saying why."""
    req = make_request(2)
    req.resource_spans[0].scope_spans[0].spans[0].name = "bad-name-here"
    filler = b"\x78\x01" * 110_000  # field 15, varint 1 (the test body limit is 256 KiB)
    body = _with_bad_utf8(req, "bad-name-here") + filler
    before = accepted_total(col)
    status, _, answer = post(col, body)
    assert status == 400, answer
    assert b"not valid UTF-8" in answer and b"100000 protobuf fields" in answer  # rpc Status
    assert_alive_and_unchanged(col, before)


# --- /metrics ----------------------------------------------------------------------------


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Running]:
    running = start(CollectorConfig(data_dir=tmp_path / "data", port=0, workers=0))
    try:
        yield running
    finally:
        running.stop()


def _scrape(url: str) -> dict[str, list[Any]]:
    status, headers, body = request(url, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def test_metrics_counters_are_exact_past_a_million(in_process: Running) -> None:
    """Six significant digits (1.23457e+07) lost increments past a million."""
    metrics = in_process.collector.metrics
    metrics.add("spans_landed_total", 12_345_678)
    metrics.add("spans_landed_total")
    samples = _scrape(in_process.url)["tooltrail_collector_spans_landed"]
    (total,) = [s.value for s in samples if s.name.endswith("_total")]
    assert total == 12_345_679


def test_metrics_label_values_are_escaped(in_process: Running) -> None:
    metrics = in_process.collector.metrics
    weird = 'a"b\\c\nd} x{'
    metrics.add("requests_total", kind=weird, code="200")
    samples = _scrape(in_process.url)["tooltrail_collector_requests"]
    assert any(s.labels == {"kind": weird, "code": "200"} and s.value == 1 for s in samples)


def test_metrics_include_process_file_descriptors_and_the_set_aside_counter(
    in_process: Running,
) -> None:
    families = _scrape(in_process.url)
    for name in ("process_open_fds", "process_max_fds", "process_cpu_seconds"):
        assert name in families, name
    assert families["process_open_fds"][0].value > 0
    assert "tooltrail_collector_spans_set_aside" in families
    assert "tooltrail_collector_spool_backlog_bytes" in families
