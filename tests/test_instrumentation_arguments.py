"""Tool arguments are decided on (and recorded in) their JSON form: a ``Path``, ``bytes``,
a ``set`` or a ``Decimal`` cannot slip past a rule that its JSON form would match."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pydantic
import pytest
from instrumentation_support import attrs, instrumented
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tooltrail.instrumentation as tt
from tooltrail.instrumentation._plain import plain_arguments
from tooltrail.policy import loads_policy
from tooltrail.semconv import GEN_AI_TOOL_CALL_ARGUMENTS, TT_DECISION, TT_POLICY_RULE

POLICY = """
version: 1
default: ALLOW
targets: [{tools: ["*"], path: "{path}"}]
rules:
  - {id: no-etc, when: {tool: "*", path: "/etc/*"}, decision: DENY}
  - {id: no-secret-files, when: {tool: stage, args: {files: ["*.env", "*.pem"]}}, decision: DENY}
  - {id: big-amount, when: {tool: pay, args: {amount: {gt: 100}}}, decision: DENY}
  - id: own-branch
    when: {tool: branch, args: {name: "main"}}
    decision: REWRITE
    rewrite: {set: {name: "agent/work"}}
"""

received: list[tuple[str, Any]] = []


@tt.tool
def read(path: Any) -> str:
    received.append(("read", path))
    return "ok"


@tt.tool
def stage(files: Any) -> str:
    received.append(("stage", files))
    return "ok"


@tt.tool
def pay(amount: Any) -> str:
    received.append(("pay", amount))
    return "ok"


@tt.tool
def branch(repo: Any, name: str) -> str:
    received.append(("branch", (repo, name)))
    return "ok"


@pytest.fixture
def enforced() -> Iterator[InMemorySpanExporter]:
    received.clear()
    with instrumented(enforce=True, policy=loads_policy(POLICY)) as exporter:
        yield exporter


class Color(enum.Enum):
    RED = "red"


# str() of a member is "Level.HIGH"; JSON writes "high" (the mixin, not StrEnum, on purpose)
class Level(str, enum.Enum):  # noqa: UP042
    HIGH = "high"


class Size(enum.IntEnum):
    BIG = 3


@dataclasses.dataclass
class Point:
    x: int
    tags: set[str]


class Model(pydantic.BaseModel):
    path: Path
    when: dt.date


def test_plain_json_arguments_are_returned_as_they_are() -> None:
    args = {"repo": "/r", "n": 3, "f": 1.5, "ok": True, "none": None, "l": ["a", 1], "d": {"k": 1}}
    assert plain_arguments(args) is args


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (Path("/etc/passwd"), "/etc/passwd"),
        (PurePosixPath("/etc"), "/etc"),
        (b"/etc/passwd", "/etc/passwd"),
        (b"\xff\xfe", "\\xff\\xfe"),
        (bytearray(b"ab"), "ab"),
        ({"prod.env", "a.py"}, ["a.py", "prod.env"]),
        (frozenset({2, 1}), [1, 2]),
        ((1, (2, Path("/x"))), [1, [2, "/x"]]),
        (decimal.Decimal("150"), 150),
        (decimal.Decimal("1.5"), 1.5),
        (decimal.Decimal("NaN"), "NaN"),
        (decimal.Decimal("sNaN"), "sNaN"),  # float() of it raises
        (Color.RED, "red"),
        (Level.HIGH, "high"),
        (Size.BIG, 3),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05+00:00"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Point(1, {"b", "a"}), {"x": 1, "tags": ["a", "b"]}),
        (
            Model(path=Path("/srv"), when=dt.date(2026, 1, 1)),
            {"path": "/srv", "when": "2026-01-01"},
        ),
        (
            {2: "int key", None: "null key", False: "bool key", 1.5: Path("/f")},
            {"2": "int key", "null": "null key", "false": "bool key", "1.5": "/f"},
        ),
        ({"nested": [Path("/x"), {b"k": b"v"}]}, {"nested": ["/x", {"b'k'": "v"}]}),
    ],
)
def test_values_are_read_in_their_json_form(value: Any, plain: Any) -> None:
    got = plain_arguments({"v": value})["v"]
    if isinstance(plain, float) or plain is None:
        assert (got is None and plain is None) or got == plain or got != got  # NaN
    else:
        assert got == plain
    json.dumps(got, allow_nan=True)  # a JSON value


def test_cycles_and_deep_nesting_end_as_text() -> None:
    loop: list[Any] = []
    loop.append(loop)
    got = plain_arguments({"loop": loop, "s": {1}})
    assert isinstance(json.dumps(got), str)


@pytest.mark.parametrize(
    ("call", "rule"),
    [
        (lambda: read(Path("/etc/passwd")), "no-etc"),
        (lambda: read(b"/etc/passwd"), "no-etc"),
        (lambda: read(PurePosixPath("/etc/shadow")), "no-etc"),
        (lambda: stage({"a.py", "prod.env"}), "no-secret-files"),
        (lambda: stage(frozenset({"key.pem"})), "no-secret-files"),
        (lambda: pay(decimal.Decimal("150")), "big-amount"),
        (lambda: pay(Size.BIG * 100), "big-amount"),
    ],
)
def test_values_a_rule_matches_in_json_form_are_denied(
    enforced: InMemorySpanExporter, call: Any, rule: str
) -> None:
    # Each ran before: the engine saw "not a string" / "not a number" and no rule matched,
    # while the record showed the value the rule denies.
    with pytest.raises(tt.ToolCallDenied) as denied:
        call()
    assert denied.value.rule == rule
    assert received == []
    span = attrs(enforced.get_finished_spans()[0])
    assert (span[TT_DECISION], span[TT_POLICY_RULE]) == ("DENY", rule)
    recorded = json.loads(str(span[GEN_AI_TOOL_CALL_ARGUMENTS]))
    assert all(type(v) in (str, int, float, list) for v in recorded.values())


def test_an_allowed_call_gets_the_callers_own_objects(enforced: InMemorySpanExporter) -> None:
    path = Path("/srv/repo/README.md")
    assert read(path) == "ok"
    assert received == [("read", path)] and type(received[0][1]) is type(path)
    span = attrs(enforced.get_finished_spans()[0])
    assert json.loads(str(span[GEN_AI_TOOL_CALL_ARGUMENTS])) == {"path": str(path)}


def test_a_rewrite_keeps_the_objects_it_did_not_change(enforced: InMemorySpanExporter) -> None:
    repo = Path("/srv/repo")
    assert branch(repo, "main") == "ok"
    assert received == [("branch", (repo, "agent/work"))]
    assert type(received[0][1][0]) is type(repo)  # not its JSON text


def test_values_that_cannot_be_converted_are_taken_as_text_never_an_error() -> None:
    # Conversion must never fail a call: enforcing, an error there would deny it.
    import threading

    @dataclasses.dataclass
    class Conn:
        dsn: str
        lock: Any  # asdict() would deep-copy it and fail

    class BadModel:
        def model_dump(self, **_: Any) -> Any:
            raise RuntimeError("no")

        def __str__(self) -> str:
            return "bad-model"

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    got = plain_arguments(
        {"conn": Conn("db://x", threading.Lock()), "m": BadModel(), "u": [Unprintable()]}
    )
    assert got["conn"]["dsn"] == "db://x" and isinstance(got["conn"]["lock"], str)
    assert got["m"] == "bad-model"
    assert got["u"] == ["<unprintable Unprintable>"]
