"""tooltrail._json: the one guarded fast JSON encoder (collector and instrumentation), and
JSON read and written at any depth (the scrubber's deep documents)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tooltrail import _json
from tooltrail._json import compact_encoder, dumps_iterative, loads_iterative
from tooltrail.collector import normalize
from tooltrail.instrumentation import _shorten
from tooltrail.redact import Redactor


def _reference(**options: Any) -> Callable[[Any], str]:
    return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, **options).encode


SAMPLE = {"b": [1, 2.5, None, True], "a": 'é\u2028"', "t": (1, "x"), "x": b"\x01"}


def test_fast_encoder_is_the_c_one_and_matches_json() -> None:
    encode = compact_encoder(default=str, sort_keys=True)
    assert encode is not _reference(default=str, sort_keys=True)
    assert encode(SAMPLE) == _reference(default=str, sort_keys=True)(SAMPLE)


def _wrong_factory(*args: Any) -> Callable[[Any, int], Any]:
    # A C encoder factory whose encoder differs from json (say, a changed signature
    # that shifts sort_keys): the self-check must catch it.
    real = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    assert real is not None
    make = real(*args)
    return lambda value, level: [*make(value, level), " "]


def _failing_factory(*args: Any) -> Callable[[Any, int], Any]:
    raise TypeError("c_make_encoder() takes 10 arguments")


@pytest.mark.parametrize("factory", [_wrong_factory, _failing_factory])
def test_a_c_encoder_that_fails_its_check_falls_back_to_json(
    factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tooltrail._json"):
        encode = compact_encoder(default=str, sort_keys=True, c_make=factory)
    assert encode(SAMPLE) == json.dumps(
        SAMPLE, default=str, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert "failed its check" in caplog.text


def test_collector_and_instrumentation_use_the_guarded_helper() -> None:
    # Both encoders come from compact_encoder (the closure it builds), with their options.
    for module in (normalize, _shorten):
        assert module._encode.__module__ == _json.__name__
    assert normalize.to_json({"b": 1, "a": float("nan")}) == '{"a":"nan","b":1}'
    assert _shorten._encode({"b": 1, "a": "é"}) == '{"b":1,"a":"é"}'


def test_normalize_to_json_survives_any_depth() -> None:
    value: Any = {"k": "v"}
    for _ in range(10_000):
        value = [value]
    text = normalize.to_json({"deep": value, "nan": float("nan")})
    assert text.startswith('{"deep":[[[') and text.endswith(']]],"nan":"nan"}')


def test_deep_documents_round_trip_without_recursion() -> None:
    text = '{"a":' + "[" * 20_000 + '{"b":null}' + "]" * 20_000 + "}"
    assert dumps_iterative(loads_iterative(text)) == text


@pytest.mark.parametrize("bad", ["", "[1,]", '{"a" 1}', "[1 2]", "NaN", "{,}", "[", "1 2", '"x'])
def test_iterative_reader_refuses_what_json_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        json.loads(bad, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    with pytest.raises(ValueError):
        loads_iterative(bad)


def test_iterative_writer_refuses_a_cycle() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="circular"):
        dumps_iterative(cycle)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, sort_keys=st.booleans())
def test_iterative_reader_and_writer_agree_with_json(value: Any, sort_keys: bool) -> None:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
    assert dumps_iterative(value, sort_keys=sort_keys) == text
    assert loads_iterative(text) == json.loads(text)
    spaced = json.dumps(value, indent=1)
    assert loads_iterative(spaced) == json.loads(spaced)


# --- opaque: a container under a named key is checked, not built ----------------------


def _opaque(key: str) -> bool:
    return key.startswith("t")


def _replaced(value: Any) -> Any:
    """``value`` with every container under an opaque key replaced by ``[]``."""
    if isinstance(value, dict):
        return {
            k: [] if _opaque(k) and isinstance(v, list | dict) else _replaced(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_replaced(v) for v in value]
    return value


keyed_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["t", "tb", "a", "b"]), children, max_size=3)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(value=keyed_values, indent=st.sampled_from([None, 0, 2]))
def test_opaque_values_read_as_empty_lists(value: Any, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)
    assert loads_iterative(text, opaque=_opaque) == _replaced(json.loads(text))


@settings(max_examples=600, deadline=None)
@given(
    value=keyed_values,
    at=st.integers(min_value=0),
    edit=st.sampled_from(["[", "]", "{", "}", ",", ":", " ", '"', "1", "", "]]", "[["]),
)
def test_opaque_values_are_checked_like_any_other(value: Any, at: int, edit: str) -> None:
    """A broken document is refused whether or not the broken part is under an opaque
    key, and a sound one is read: checking is not building, but it is not skipping."""
    text = json.dumps(value)
    at %= len(text)
    broken = text[:at] + edit + text[at + 1 :]
    try:
        expected: Any = _replaced(loads_iterative(broken))
    except ValueError:
        with pytest.raises(ValueError):
            loads_iterative(broken, opaque=_opaque)
    else:
        assert loads_iterative(broken, opaque=_opaque) == expected


@pytest.mark.parametrize(
    "bad",
    ['{"t": [[[]]}', '{"t": [[[]]]]', '{"t": [ [ [ ] ] } ]', '{"t": [[{]]]}', '{"t": [1 2]}'],
)
def test_opaque_refuses_unbalanced_brackets_naming_the_offset(bad: str) -> None:
    with pytest.raises(ValueError, match="offset"):
        loads_iterative(bad, opaque=_opaque)


@pytest.mark.parametrize("unit", ["[", "[ ", "[\n"])
def test_a_million_levels_under_an_opaque_key(unit: str) -> None:
    closer = unit.replace("[", "]")
    text = '{"token": ' + unit * 1_000_000 + closer * 1_000_000 + ', "after": 1}'
    assert loads_iterative(text, opaque=_opaque) == {"token": [], "after": 1}


@pytest.mark.parametrize(
    ("document", "kept", "gone"),
    [
        ('{"\\u0070assword": "hunter2"}', "password", "hunter2"),
        ('{"api_\\u006bey": "sk-live-abcdef"}', "api_key", "sk-live-abcdef"),
        (
            '{"url": "https:\\/\\/bob:hunter2secret@example.com\\/x"}',
            "example.com",
            "hunter2secret",
        ),
    ],
)
def test_json_escapes_cannot_hide_a_credential_from_the_pre_check(
    document: str, kept: str, gone: str
) -> None:
    """The cheap pre-check reads raw text; a JSON escape spells a marker it cannot see, so
    text holding one is always walked (where keys and values are read decoded)."""
    scrubbed, count = Redactor().scrub_json(document)
    assert count == 1 and gone not in scrubbed and kept in scrubbed
