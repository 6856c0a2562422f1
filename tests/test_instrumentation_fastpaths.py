"""The per-call shortcuts of the tool span path give exactly what the plain code gives:
the argument JSON (a C encoder built once instead of per call) and the ``ToolCall`` handed
to the policy (slots set directly instead of the frozen dataclass ``__init__``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tooltrail._json import compact_encoder
from tooltrail.instrumentation import _settings, _shorten
from tooltrail.policy import ToolCall

LIMIT = _shorten.MAX_ARGUMENTS_CHARS


def reference(value: Any, limit: int = LIMIT) -> str:
    """What ``to_json`` produced before the shortcut: a fresh ``json.dumps`` per call."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(repr(value), ensure_ascii=False)
    return _shorten.truncate(text, limit)


class Opaque:
    """Not JSON: encoded through ``default=str``."""

    def __str__(self) -> str:
        return "opaque ✓"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included: JSON spells them NaN / Infinity
    st.text(),
    st.binary(max_size=8),
    st.builds(Opaque),
)
keys = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(), st.floats())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=values)
def test_to_json_is_what_json_dumps_gives(value: Any) -> None:
    assert _shorten.to_json(value, LIMIT) == reference(value)


@pytest.mark.parametrize(
    "value",
    [
        {"repo_path": "/srv/repos/payments", "branch_name": "feature/retry"},
        {},
        "plain",
        {"s": 'é\u2028"\\\n', "n": [1, 2.5, None, True, math.nan, -math.inf]},
        {3: "int key", 2.5: "float key", True: "bool key", None: "null key"},
        {("tuple", "key"): 1},  # not a JSON key: recorded as the repr, never raised
    ],
)
def test_to_json_known_values(value: Any) -> None:
    assert _shorten.to_json(value, LIMIT) == reference(value)


MARK = _shorten.TRUNCATION_MARK


def test_oversized_arguments_stay_a_json_object_with_their_short_values() -> None:
    # A policy decides after the fact (and replays) from the recorded arguments: a long
    # note must not cost it the `env` it matches on.
    value = {"service": "api", "env": "prod", "notes": "n" * 70_000, "tags": ["t" * 40_000]}
    text = _shorten.to_json(value, LIMIT)
    assert len(text) <= LIMIT
    got = json.loads(text)
    assert (got["service"], got["env"]) == ("api", "prod")
    assert got["notes"].endswith(MARK) and got["notes"].startswith("n" * 1000)
    assert got["tags"][0].endswith(MARK)


def test_oversized_values_json_cannot_hold_are_cut_as_their_str() -> None:
    class Big:
        def __str__(self) -> str:
            return "b" * 100_000

    got = json.loads(_shorten.to_json({"blob": Big(), "n": 1, "raw": b"x" * 80_000}, LIMIT))
    assert got["n"] == 1
    assert got["blob"].startswith("bbb") and got["blob"].endswith(MARK)
    assert got["raw"].startswith("b'xxx") and got["raw"].endswith(MARK)


def test_arguments_too_many_to_fit_are_cut_as_text() -> None:
    # Cutting strings cannot shrink 20,000 keys below the limit: the text is cut instead.
    value = {f"key-{i:05d}": i for i in range(20_000)}
    text = _shorten.to_json(value, LIMIT)
    assert text == reference(value)
    assert len(text) == LIMIT and text.endswith(MARK)


def test_an_oversized_plain_string_stays_a_json_string() -> None:
    got = json.loads(_shorten.to_json("y" * (LIMIT + 10), LIMIT))
    assert got.startswith("yyy") and got.endswith(MARK)


def test_circular_arguments_are_recorded_as_their_repr() -> None:
    loop: list[Any] = []
    loop.append(loop)
    value = {"path": "/x", "rest": loop}
    assert _shorten.to_json(value, LIMIT) == json.dumps(repr(value), ensure_ascii=False)


def test_one_value_encoded_on_many_threads_at_once() -> None:
    # A str() that releases the GIL mid-encoding: encoders sharing circular-check state
    # between threads would take the shared value for a cycle on some of them.
    class Slow:
        def __str__(self) -> str:
            time.sleep(0.0005)
            return "slow"

    shared = {"a": [Slow(), {"b": [Slow()]}], "c": [Slow()]}
    expected = reference(shared)
    got: list[str] = []

    def work() -> None:
        got.extend(_shorten.to_json(shared, LIMIT) for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [expected] * 80


def test_without_the_c_encoder_the_plain_encoder_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The encoder comes from tooltrail._json (shared with the collector; its self-check
    # and fallback are tested in tests/test_redact_json.py).
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)  # another interpreter
    encode = compact_encoder(default=str)
    assert isinstance(getattr(encode, "__self__", None), json.JSONEncoder)
    assert encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'


def test_the_c_encoder_is_used_here() -> None:
    # Otherwise the tests above compare the plain encoder with itself.
    assert not isinstance(getattr(_shorten._encode, "__self__", None), json.JSONEncoder)


# --- the ToolCall constructor ---------------------------------------------------------


def test_fast_tool_call_equals_the_dataclass() -> None:
    make = _settings._call_constructor(ToolCall)
    assert make is not ToolCall
    args = {"branch": "main"}
    hints = {"readOnlyHint": True}
    fast = make("git_push", args, "bot", "s-1", "git", hints)
    plain = ToolCall(
        tool="git_push",
        arguments=args,
        agent="bot",
        session_id="s-1",
        server="git",
        annotations=hints,
    )
    assert fast == plain and repr(fast) == repr(plain)
    assert type(fast) is ToolCall and fast.arguments is args
    with pytest.raises(AttributeError):  # still frozen
        fast.tool = "other"  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class ReorderedCall:
    arguments: dict[str, Any]
    tool: str
    agent: str | None = None
    session_id: str | None = None
    server: str | None = None
    annotations: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CheckedCall:
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None
    session_id: str | None = None
    server: str | None = None
    annotations: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.tool:
            raise ValueError("empty tool name")


@pytest.mark.parametrize("cls", [ReorderedCall, CheckedCall])
def test_a_call_type_of_another_shape_is_built_by_its_own_init(cls: type[Any]) -> None:
    # The shortcut assumes ToolCall's fields in order and no __post_init__ to skip.
    assert _settings._call_constructor(cls) is cls


def test_a_circular_argument_under_a_high_recursion_limit_does_not_crash() -> None:
    """With a recursion limit the C stack cannot back, a cycle must not reach the C
    encoder's recursion (it would segfault the host): run in a child to survive a crash."""
    code = (
        "import sys; from tooltrail.instrumentation._shorten import to_json\n"
        "a = []; a.append(a); sys.setrecursionlimit(200000)\n"
        "print(to_json(a, 200))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == json.dumps("[[...]]")


def test_shortening_encodes_a_large_value_at_most_a_few_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guessing the cap by halving re-encoded the whole value a dozen times.
    encodes: list[int] = []
    real = _shorten._ENCODER.encode

    class Counting:
        def encode(self, value: Any) -> str:
            encodes.append(1)
            return real(value)

    monkeypatch.setattr(_shorten, "_ENCODER", Counting())
    value = {"env": "prod", "blob": "x" * 200_000, "ids": list(range(5_000))}
    got = json.loads(_shorten.to_json(value, LIMIT))
    assert got["env"] == "prod" and got["blob"].endswith(MARK)
    assert len(encodes) <= 2
    encodes.clear()
    bulk = {"ids": list(range(300_000))}  # no string to cut: straight to the text cut
    assert _shorten.to_json(bulk, LIMIT).endswith(MARK)
    assert encodes == []
