"""Environment switches: yes/no spellings, and security switches that fail safe."""

from __future__ import annotations

import pytest

from tooltrail.config import env_flag
from tooltrail.redact import Redactor


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("YES", True), ("enabled", True), ("0", False), ("off", False), ("No", False)],
)
def test_yes_no_spellings(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("TOOLTRAIL_X", raw)
    assert env_flag("TOOLTRAIL_X") is expected


def test_unset_and_empty_take_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLTRAIL_X", raising=False)
    assert env_flag("TOOLTRAIL_X", default=True) is True
    monkeypatch.setenv("TOOLTRAIL_X", " ")
    assert env_flag("TOOLTRAIL_X") is False


def test_a_typo_in_a_security_switch_keeps_protection_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TOOLTRAIL_REDACT", "enabeld")
    assert Redactor.from_env().enabled is True
    assert env_flag("TOOLTRAIL_REDACT", default=True, unrecognized=True) is True
    monkeypatch.setenv("TOOLTRAIL_ENFORCE", "sure")
    assert env_flag("TOOLTRAIL_ENFORCE", unrecognized=True) is True
    assert "neither yes nor no" in caplog.text
    monkeypatch.setenv("TOOLTRAIL_REDACT", "off")
    assert Redactor.from_env().enabled is False
