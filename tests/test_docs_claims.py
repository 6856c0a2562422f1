"""What the docs say about other packages' APIs holds for the installed versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_call_tool_result_is_named_as_mcp_names_it() -> None:
    """mcp 2.x's CallToolResult has the Python attribute ``is_error``; ``isError`` is only
    its JSON name on the wire. Docs that write ``CallToolResult(isError=...)`` or
    ``result.isError`` name a Python spelling that does not exist."""
    types = pytest.importorskip("mcp.types")
    fields = types.CallToolResult.model_fields
    assert "is_error" in fields and fields["is_error"].alias == "isError"
    wrong: list[str] = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"CallToolResult\(isError|\.isError\b|`isError`(?!.*wire)", line):
                wrong.append(f"{doc.name}:{n}: {line.strip()}")
    assert not wrong, "\n".join(wrong)
