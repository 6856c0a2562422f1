"""docs/CLI.md is exactly what the commands' --help says."""

from __future__ import annotations

from pathlib import Path

from tooltrail.cli_reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "CLI.md"


def test_cli_reference_is_in_sync() -> None:
    assert DOC.read_text() == render(), (
        "docs/CLI.md is stale: run `python -m tooltrail.cli_reference > docs/CLI.md`"
    )


def test_reference_covers_every_command() -> None:
    text = DOC.read_text()
    for name in (
        "demo",
        "sessions",
        "show",
        "query",
        "ingest",
        "compact",
        "approve",
        "policy replay",
    ):
        assert f"## tooltrail {name}\n" in text
