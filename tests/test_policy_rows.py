"""apply_to_row: the exporter's after-the-fact decisions on landed rows (policy_api.md)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tooltrail.policy import apply_to_row, call_from_row, load_policy
from tooltrail.schema import Row, empty_row
from tooltrail.semconv import TT_POLICY_REASON, TT_TOOL_ANNOTATIONS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GIT = load_policy(EXAMPLES / "policy-git.yaml")
GITHUB = load_policy(EXAMPLES / "policy-github.yaml")


def tool_row(tool: str, arguments: Any, **extra: Any) -> Row:
    row = empty_row()
    row.update(
        trace_id="t",
        span_id="s",
        span_type="tool",
        tool_name=tool,
        arguments=arguments
        if arguments is None or isinstance(arguments, str)
        else json.dumps(arguments),
        session_id="sess-1",
        agent_name="coder",
    )
    row.update(extra)
    return row


def test_fills_an_undecided_tool_row() -> None:
    row = tool_row(
        "git_checkout",
        {"repo_path": "/src/app", "branch_name": "main"},
        attributes=json.dumps({"custom": 1}),
    )
    apply_to_row(GIT, row)
    assert row["decision"] == "REWRITE"
    assert row["policy_rule"] == "checkout-default-branch"
    assert row["policy_matched"] == ["checkout-default-branch"]
    assert row["policy_version"] == GIT.version
    assert row["blast_radius"] == "High"
    assert (row["target_repo"], row["target_branch"], row["target_path"]) == (
        "/src/app",
        "main",
        None,
    )
    assert json.loads(row["arguments_rewritten"]) == {
        "repo_path": "/src/app",
        "branch_name": "agent/sess-1",  # templates see the row's session id
    }
    assert row["enforced"] is False
    assert json.loads(row["attributes"]) == {
        "custom": 1,
        TT_POLICY_REASON: "Agents work on their own branch",
    }


@pytest.mark.parametrize(
    "decided",
    [
        {"decision": "ALLOW", "enforced": True},
        {"decision": "DENY", "enforced": None},  # decided, even if `enforced` was not set
        {"decision": None, "enforced": True},  # enforced at call time: never re-decided
    ],
)
def test_rows_already_decided_are_never_touched(decided: dict[str, Any]) -> None:
    row = tool_row("git_reset", {"repo_path": "/r"}, policy_rule="earlier", **decided)
    before = copy.deepcopy(row)
    apply_to_row(GIT, row)
    assert row == before


def test_engine_enums_match_the_landed_schema() -> None:
    from tooltrail import schema
    from tooltrail.policy import model

    assert model.BLAST_RADII == schema.BLAST_RADII
    assert tuple(model.STRICTNESS) == schema.DECISIONS


def test_non_tool_rows_are_never_touched() -> None:
    row = tool_row("git_reset", {"repo_path": "/r"}, span_type="llm")
    before = copy.deepcopy(row)
    apply_to_row(GIT, row)
    assert row == before


@pytest.mark.parametrize("arguments", [None, "not json", "[1, 2]", '"text"', ""])
def test_null_or_invalid_arguments_count_as_empty(arguments: str | None) -> None:
    row = tool_row("git_log", arguments)
    apply_to_row(GIT, row)
    assert call_from_row(row).arguments == {}
    assert (row["decision"], row["policy_rule"]) == ("ALLOW", "pass")
    assert row["arguments"] == arguments  # left as landed


def test_a_policy_that_could_not_load_never_yields_allow() -> None:
    row = tool_row("git_status", {"repo_path": "/r"})
    apply_to_row(None, row, error="policy.yaml:3: bad")
    assert row["decision"] is None
    assert row["policy_rule"] == "policy-error"
    assert row["enforced"] is False
    untouched = tool_row("git_status", {"repo_path": "/r"})
    before = copy.deepcopy(untouched)
    apply_to_row(None, untouched)  # no policy configured at all: nothing to record
    assert untouched == before


def test_recorded_tool_annotations_drive_hint_conditions() -> None:
    attributes = {TT_TOOL_ANNOTATIONS: json.dumps({"readOnlyHint": True})}
    read = tool_row("whoami", {}, attributes=json.dumps(attributes))
    apply_to_row(GITHUB, read)
    assert (read["decision"], read["policy_rule"]) == ("ALLOW", "preset:approve-reads")
    unknown = tool_row("whoami", {})
    apply_to_row(GITHUB, unknown)
    assert unknown["decision"] == "REQUIRE_APPROVAL"
    assert json.loads(unknown["attributes"])[TT_POLICY_REASON].startswith("not known to be")


def test_redaction_rewrites_the_landed_arguments() -> None:
    secret = "AKIAABCDEFGHIJKLMNOP"
    row = tool_row("git_commit", {"repo_path": "/r", "message": f"key {secret}"}, redactions=1)
    apply_to_row(GIT, row)
    assert row["decision"] == "REWRITE"
    assert secret not in json.dumps(row, default=str)
    assert json.loads(row["arguments"]) == {"repo_path": "/r", "message": "key [REDACTED]"}
    assert row["redactions"] == 2  # added to what the instrumentation already redacted


def test_importing_the_policy_package_stays_light() -> None:
    # The agent side imports tooltrail.policy: no duckdb, polars, pyarrow, streamlit or click.
    # (pyarrow comes with tooltrail.schema, so the engine keeps its own copy of the enums.)
    code = (
        "import sys, tooltrail.policy; "
        "print(sorted(m for m in ('duckdb', 'polars', 'pyarrow', 'streamlit', 'click') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


SCRUB_POLICY = load_policy(
    {
        "version": 1,
        "rules": [
            {
                "id": "scrub",
                "when": {"tool": "login"},
                "decision": "REWRITE",
                "rewrite": {"redact": ["pin", {"regex": "SEKRIT[0-9]+"}]},
            }
        ],
    }
)


def _landed_login_row(arguments: dict[str, Any], **extra: Any) -> Row:
    """A login row as the normalizer lands it in observe-only mode: the summary derived
    from the (unredacted) arguments."""
    from tooltrail.collector.normalize import derive_summary

    return tool_row(
        "login", arguments, action_summary=derive_summary("login", args=arguments), **extra
    )


def test_redactions_reach_the_summary_result_and_status_message() -> None:
    args = {"user": "bob", "pin": "9876", "path": "/home/SEKRIT42/x"}
    row = _landed_login_row(
        args,
        result_preview="logged in bob with pin 9876 at /home/SEKRIT42/x",
        status_message="ValueError: bad pin 9876 (SEKRIT7)",
        redactions=0,
    )
    assert "SEKRIT42" in row["action_summary"]  # what the normalizer landed
    apply_to_row(SCRUB_POLICY, row)
    assert json.loads(row["arguments"]) == {
        "user": "bob",
        "pin": "[REDACTED]",
        "path": "/home/[REDACTED]/x",
    }
    assert row["action_summary"] == "login path=/home/[REDACTED]/x"
    assert row["result_preview"] == "logged in bob with pin [REDACTED] at /home/[REDACTED]/x"
    assert row["status_message"] == "ValueError: bad pin [REDACTED] ([REDACTED])"
    landed = json.dumps(row, default=str)
    assert "9876" not in landed and "SEKRIT" not in landed
    assert row["redactions"] == 2 + 2 + 2  # arguments, result, status message


def test_a_summary_cut_inside_a_redacted_value_is_derived_again() -> None:
    secret = "SEKRIT" + "9" * 80  # longer than a summary shows: cut to 60 characters
    args = {"user": "bob", "path": f"/home/{secret}/x"}
    row = _landed_login_row(args)
    assert row["action_summary"].endswith("…") and secret not in row["action_summary"]
    apply_to_row(SCRUB_POLICY, row)
    assert row["action_summary"] == "login path=/home/[REDACTED]/x"


def test_a_producers_own_summary_is_scrubbed_as_text() -> None:
    row = tool_row(
        "login",
        {"user": "bob", "pin": "9876"},
        action_summary="log in bob (pin 9876)",
        target_path="/vault/9876",
    )
    apply_to_row(SCRUB_POLICY, row)
    assert row["action_summary"] == "log in bob (pin [REDACTED])"
    assert row["target_path"] == "/vault/[REDACTED]"


def test_free_text_is_untouched_without_a_redacting_rule() -> None:
    row = _landed_login_row({"user": "bob", "pin": "9876"}, result_preview="pin 9876")
    row["tool_name"] = "logout"
    before = dict(row)
    apply_to_row(SCRUB_POLICY, row)
    assert (row["result_preview"], row["action_summary"], row["arguments"]) == (
        before["result_preview"],
        before["action_summary"],
        before["arguments"],
    )
