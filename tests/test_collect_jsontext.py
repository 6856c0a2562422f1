"""``collector/jsontext.loads``: naming a huge integer's place costs memory linear in the body."""

from __future__ import annotations

import tracemalloc

import pytest

from tooltrail.collector.jsontext import HugeIntegerError, loads

HUGE = "1" * 5000  # past CPython's 4,300-digit int conversion limit


def test_a_huge_integer_is_named_by_its_path() -> None:
    with pytest.raises(HugeIntegerError) as info:
        loads('{"a": [1, {"b": ' + HUGE + "}]}")
    assert str(info.value).startswith("a[1].b: an integer of 5000 digits")


def test_finding_a_huge_integer_deep_under_long_keys_stays_small() -> None:
    """Building every node's full path cost key length x depth^2 / 2: 500-char keys 400
    deep (a 200 KB body) took some 40 MB, and a 0.9 MB body 400 MB. Only the found
    integer's path is built, and cut to 200 characters."""
    key = "k" * 500
    body = f'{{"{key}":' * 400 + HUGE + "}" * 400
    tracemalloc.start()
    try:
        with pytest.raises(HugeIntegerError) as info:
            loads(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(body), f"peak {peak} bytes for a {len(body)}-byte body"
    message = str(info.value)
    assert message.startswith("...k") and "5000 digits" in message
    assert len(message.split(":")[0]) <= 203
