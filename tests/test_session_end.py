"""Sessions end explicitly (issue 17, "Complete"): real agent processes land through
tooltrail's exporter with the real OTel SDK; the views, the CLI and the gateway read it.

* leaving ``tt.session`` lands an end record: ``completed``, or ``failed`` if the body raised;
* an agent killed with SIGKILL never ends its session: ``abandoned`` once idle;
* a gateway client disconnecting ends its session;
* an operator's ``tooltrail complete`` records who and why (operator role under access
  control);
* the activity trace orders LLM steps, tool calls and control events, with filters;
* tags land and filter; data without end records keeps today's guesses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from access_support import invoke, people
from click.testing import CliRunner
from collect_support import CollectorProcess, metric, wait_until
from ending_support import agent, run_agent, run_trace_agent
from gateway_support import (
    fs_server,
    git_server,
    proxy_command,
    raw_client,
    require_node,
    run_client,
    text_of,
)
from git_support import init_repo

from tooltrail import analytics
from tooltrail.cli import cli

WINDOW = dt.timedelta(seconds=1)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def one(data: Path, session_id: str, **connect: Any) -> dict[str, Any]:
    with analytics.connect(data, **connect) as con:
        header = analytics.session(con, session_id)
    assert header is not None, session_id
    row: dict[str, Any] = header.row(0, named=True)
    return row


def cli_json(data: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, [args[0], "--data", str(data), *args[1:]])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_session_left_normally_is_completed_one_that_raised_failed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_agent(data, "ok", "s-ok")
    run_agent(data, "raise", "s-raise")
    ok, raised = one(data, "s-ok"), one(data, "s-raise")
    # Known at once (within the idle window, no guessing from idle time).
    assert (ok["status"], ok["status_basis"], ok["end_source"]) == (
        "completed",
        "end_record",
        "session",
    )
    assert (raised["status"], raised["end_outcome"]) == ("failed", "failed")
    assert raised["end_reason"] == "the session's code raised RuntimeError"
    assert raised["errors"] == 0  # no tool call failed: only the end record says failed
    # Tags land (from tt.session(tags=...)), are listed and filter.
    assert ok["tags"] == ["nightly", "release"]
    listed = cli_json(data, "sessions", "--tag", "nightly", "--tag", "release", "--format", "json")
    assert sorted(r["session_id"] for r in listed) == ["s-ok", "s-raise"]
    assert (
        cli_json(data, "sessions", "--tag", "nightly", "--tag", "other", "--format", "json") == []
    )
    failed = cli_json(data, "sessions", "--status", "failed", "--format", "json")
    assert [r["session_id"] for r in failed] == ["s-raise"]
    # The session index (tooltrail compact) keeps the ends and tags, and merges a newer end:
    # s-ok run again and raising is failed now.
    result = CliRunner().invoke(cli, ["compact", "--data", str(data)])
    assert result.exit_code == 0, result.output
    run_agent(data, "raise", "s-ok")
    with analytics.connect(data) as con:
        rows = analytics.sessions(con).to_dicts()
    assert {r["session_id"]: (r["status"], r["tags"]) for r in rows} == {
        "s-ok": ("failed", ["nightly", "release"]),
        "s-raise": ("failed", ["nightly", "release"]),
    }


def test_end_records_land_through_the_collector_and_ingest(tmp_path: Path) -> None:
    agent_data, collected, ingested = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with CollectorProcess(collected, "--flush-interval", "0.2") as col:
        run_agent(agent_data, "raise", "s-otlp", col.url)
        wait_until(lambda: metric(col.url, "spans_landed_total") >= 2, what="landed")
    row = one(collected, "s-otlp")
    assert (row["status"], row["end_source"], row["tags"]) == (
        "failed",
        "session",
        ["nightly", "release"],
    )
    # Written as OTLP JSON (the OTel Collector's file exporter) and ingested: the same.
    otlp = tmp_path / "spans.jsonl"
    run_agent(agent_data, "ok", "s-file", f"file:{otlp}")
    result = CliRunner().invoke(cli, ["ingest", "--data", str(ingested), str(otlp)])
    assert result.exit_code == 0, result.output
    row = one(ingested, "s-file")
    assert (row["status"], row["status_basis"]) == ("completed", "end_record")


def test_a_killed_agent_is_abandoned_after_the_window(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "data"
    proc = agent(data, "hang", "s-killed")
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Within the window it may still be working; after it, it is known to have died.
    assert one(data, "s-killed")["status"] == "active"
    time.sleep(WINDOW.total_seconds() + 0.2)
    row = one(data, "s-killed", idle_window=WINDOW)
    assert (row["status"], row["status_basis"], row["ended_at"]) == (
        "abandoned",
        "idle_window",
        None,
    )
    assert row["tags"] == ["doomed"]
    # The window is configurable for every reader: $TOOLTRAIL_IDLE_WINDOW (the CLI here).
    env = {"TOOLTRAIL_IDLE_WINDOW": "1s"}
    result = CliRunner().invoke(
        cli, ["sessions", "--data", str(data), "--status", "abandoned", "--format", "json"], env=env
    )
    assert result.exit_code == 0, result.output
    assert [r["session_id"] for r in json.loads(result.stdout)] == ["s-killed"]
    result = CliRunner().invoke(
        cli, ["sessions", "--data", str(data)], env={"TOOLTRAIL_IDLE_WINDOW": "soon"}
    )
    assert result.exit_code == 2 and "$TOOLTRAIL_IDLE_WINDOW: 'soon'" in result.output
    # An operator who knows it finished marks it complete: who and why are recorded.
    result = CliRunner().invoke(
        cli,
        ["complete", "--data", str(data), "s-killed", "--by", "ops", "--reason", "done by hand"],
    )
    assert result.exit_code == 0, result.output
    row = one(data, "s-killed", idle_window=WINDOW)
    assert (row["status"], row["status_basis"]) == ("completed", "operator")
    assert (row["completed_by"], row["completion_reason"]) == ("ops", "done by hand")


def test_operator_completion_needs_a_reason_and_the_operator_role(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_agent(data, "raise", "s-1")
    code, _, err = invoke(data, "complete", "s-1", "--by", "ops")
    assert code == 2 and "--reason" in err
    creds = people(data)
    code, _, err = invoke(data, "complete", "s-1", "--reason", "x", token=creds["alice"])
    assert code != 0 and "may not" in err
    assert one(data, "s-1")["status"] == "failed"
    olga = creds["olga"]
    code, _, err = invoke(data, "complete", "s-1", "--reason", "retried by hand", token=olga)
    assert code == 0, err
    row = one(data, "s-1")
    assert (row["status"], row["completed_by"], row["completion_reason"]) == (
        "completed",
        "olga",
        "retried by hand",
    )
    code, _, err = invoke(data, "complete", "no-such", "--reason", "x", token=creds["olga"])
    assert code == 2 and "no session 'no-such'" in err


def test_a_gateway_client_disconnect_ends_its_session(tmp_path: Path) -> None:
    data = tmp_path / "data"
    repo = init_repo(tmp_path / "repo")
    command = proxy_command(None, data, git_server(repo), "--session-id", "s-gw", "--observe")
    with raw_client(command) as client:
        client.initialize()
        call = {"name": "git_status", "arguments": {"repo_path": str(repo)}}
        client.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        assert "result" in client.response(1, timeout=60)
        assert client.close() == 0
    row = one(data, "s-gw")
    assert (row["status"], row["end_source"], row["governed_by"]) == (
        "completed",
        "gateway",
        "gateway",
    )
    assert row["end_reason"] == "the MCP client disconnected"


def test_the_official_typescript_client_closing_ends_its_gateway_session(tmp_path: Path) -> None:
    """The TypeScript SDK's StdioClientTransport.close() ends the gateway as it does (stdin
    closed, SIGTERM after a grace); either way the session's end is recorded."""
    require_node()
    data, root = tmp_path / "data", tmp_path / "files"
    root.mkdir()
    (root / "notes.txt").write_text("hello")
    command = proxy_command(None, data, fs_server(root), "--session-id", "s-ts", "--observe")
    steps = [
        {"op": "call", "name": "read_text_file", "arguments": {"path": str(root / "notes.txt")}}
    ]
    (step,) = run_client(tmp_path, command, steps)
    assert "hello" in text_of(step)
    row = one(data, "s-ts")
    assert (row["status"], row["status_basis"], row["end_source"]) == (
        "completed",
        "end_record",
        "gateway",
    )


def test_the_trace_orders_llm_steps_tool_calls_and_control_events(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_trace_agent(data, "s-trace")

    trace = analytics.session_trace(data, "s-trace")
    assert trace["entry"].to_list() == [
        "agent",
        "llm",
        "tool",
        "control",
        "control",
        "llm",
        "tool",
        "end",  # the root agent span ended
        "output",
        "end",  # the session was left
    ]
    llm = trace.filter(trace["entry"] == "llm").to_dicts()
    assert [r["model"] for r in llm] == ["gpt-4o", "gpt-4o"]
    assert [(r["input_tokens"], r["output_tokens"]) for r in llm] == [(101, 11), (102, 12)]
    assert llm[0]["prompt"] == "user: what is 1 + 2?"
    assert llm[1]["output"] == "assistant: The answer is 3."
    control = trace.filter(trace["entry"] == "control")
    assert control["name"].to_list() == ["pause", "resume"]
    assert control["actor"].to_list() == ["ops", "ops"]
    assert trace.filter(trace["entry"] == "tool")["sequence"].to_list() == [1, 2]
    assert trace.filter(trace["entry"] == "output")["output"].to_list() == ["The answer is 3."]
    assert trace["occurred_at"].is_sorted()

    reasoning = analytics.session_trace(data, "s-trace", only="reasoning")["entry"].to_list()
    assert reasoning == ["agent", "llm", "control", "control", "llm", "end", "output", "end"]
    tools = analytics.session_trace(data, "s-trace", only="tools")["entry"].to_list()
    assert tools == ["tool", "control", "control", "tool", "end", "end"]

    doc = cli_json(data, "show", "s-trace", "--trace", "--only", "tools", "--format", "json")
    assert [e["entry"] for e in doc["trace"]] == tools
    assert doc["session"]["status"] == "completed"
    table = CliRunner().invoke(cli, ["show", "--data", str(data), "s-trace", "--trace"])
    assert table.exit_code == 0, table.output
    assert "session paused" in table.stdout and "The answer is 3." in table.stdout


def test_data_without_end_records_keeps_the_idle_guesses(
    make_row: Any, landed: Any, data_dir: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(hours=1)
    landed(
        [
            make_row(session_id="s-old", start_time=old, end_time=old),
            make_row(session_id="s-err", start_time=old, end_time=old, status_code="ERROR"),
            make_row(session_id="s-now", start_time=now, end_time=now),
        ]
    )
    status = {
        r["session_id"]: (r["status"], r["status_basis"])
        for r in analytics.sessions(data_dir).to_dicts()
    }
    assert status == {
        "s-old": ("completed", "guessed"),
        "s-err": ("failed", "guessed"),
        "s-now": ("active", "guessed"),
    }
