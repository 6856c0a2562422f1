"""sessions / show / query / ingest / compact through CliRunner over real landed data."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tooltrail import semconv as sc
from tooltrail.cli import cli
from tooltrail.collector import TooltrailSpanExporter
from tooltrail.collector.writer import iter_span_files

FIXTURE = Path(__file__).parent / "fixtures" / "collector_traces.jsonl"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def landed(tmp_path: Path) -> Path:
    """Two sessions of tool calls landed through the real SDK and exporter."""
    data = tmp_path / "data"
    exporter = TooltrailSpanExporter(data_dir=data, policy=None)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    plan = [
        ("s-alpha", "release-bot", "git_status", "ALLOW", "Low", "/r/pay"),
        ("s-alpha", "release-bot", "git_commit", "REQUIRE_APPROVAL", "High", "/r/pay"),
        ("s-alpha", "release-bot", "git_reset", "DENY", "Critical", "/r/pay"),
        ("s-beta", "docs-writer", "git_checkout", "REWRITE", "Medium", "/r/web"),
    ]
    for seq, (session, agent, tool, decision, radius, repo) in enumerate(plan, start=1):
        attrs = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: tool,
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"repo_path": repo}),
            sc.TT_SESSION_ID: session,
            sc.GEN_AI_AGENT_NAME: agent,
            sc.TT_SEQUENCE: seq,
            sc.TT_DECISION: decision,
            sc.TT_POLICY_RULE: "pass" if decision == "ALLOW" else f"rule-{tool}",
            sc.TT_ENFORCED: True,
            sc.TT_BLAST_RADIUS: radius,
            sc.TT_TARGET_REPO: repo,
        }
        with tracer.start_as_current_span(f"execute_tool {tool}", attributes=attrs):
            pass
    provider.shutdown()
    return data


def test_sessions_json_and_invariant(landed: Path) -> None:
    code, out = _run("sessions", "--data", str(landed), "--format", "json")
    assert code == 0, out
    rows = {r["session_id"]: r for r in json.loads(out)}
    assert set(rows) == {"s-alpha", "s-beta"}
    alpha = rows["s-alpha"]
    assert (alpha["allows"], alpha["denies"], alpha["approvals"], alpha["rewrites"]) == (1, 1, 1, 0)
    assert alpha["action_count"] == 3 and alpha["max_blast_radius"] == "Critical"
    assert alpha["repos"] == ["/r/pay"]
    for r in rows.values():
        decided = r["allows"] + r["denies"] + r["rewrites"] + r["approvals"]
        assert decided + r["undecided"] == r["action_count"]


def test_observed_tool_calls_count_as_actions_in_the_list_and_the_detail(tmp_path: Path) -> None:
    """Three tool calls an agent reported without a policy: the list says 3, as the
    session's detail does (it said "Actions 0" while the detail page said 3)."""
    data = tmp_path / "data"
    exporter = TooltrailSpanExporter(data_dir=data, policy=None)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for tool in ("git_status", "git_diff", "git_log"):
        attrs = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: tool,
            sc.TT_SESSION_ID: "s-observed",
            sc.GEN_AI_AGENT_NAME: "watcher",
        }
        with tracer.start_as_current_span(f"execute_tool {tool}", attributes=attrs):
            pass
    provider.shutdown()
    code, out = _run("sessions", "--data", str(data), "--format", "json")
    assert code == 0, out
    (row,) = json.loads(out)
    assert (row["action_count"], row["undecided"], row["allows"]) == (3, 3, 0)
    code, out = _run("show", "s-observed", "--data", str(data), "--format", "json")
    assert code == 0, out
    doc = json.loads(out)
    assert len(doc["actions"]) == 3
    # the dashboard's detail page reads total_actions, its list action_count
    assert doc["session"]["action_count"] == doc["session"]["total_actions"] == 3


def test_sessions_filters_and_formats(landed: Path) -> None:
    code, out = _run("sessions", "--data", str(landed), "--agent", "docs-writer", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["session_id"] for r in rows] == ["s-beta"]
    code, out = _run("sessions", "--data", str(landed))
    assert code == 0 and "s-alpha" in out and "release-bot" in out and "session_id" in out
    code, out = _run("sessions", "--data", str(landed), "--since", "banana")
    assert code == 2 and "--since: 'banana'" in out


@pytest.fixture
def gateway_landed(landed: Path) -> Path:
    """``landed`` plus a session through the MCP gateway (its spans' attributes as
    gateway/stdio.py sets them) with one call to a tool whose definition changed."""
    exporter = TooltrailSpanExporter(data_dir=landed, policy=None)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for seq, (tool, changed) in enumerate((("list_dir", False), ("read_file", True)), start=1):
        attrs = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: tool,
            sc.MCP_SERVER_NAME: "filesystem",
            sc.TT_SESSION_ID: "s-gateway",
            sc.GEN_AI_AGENT_NAME: "claude-code",
            sc.TT_SEQUENCE: seq,
            sc.TT_DECISION: "REQUIRE_APPROVAL" if changed else "ALLOW",
            sc.TT_ENFORCED: True,
            sc.TT_GATEWAY: True,
            sc.TT_MCP_CLIENT_NAME: "claude-code",
            sc.TT_MCP_CLIENT_VERSION: "1.0.3",
        }
        if changed:
            attrs[sc.TT_TOOL_DEFINITION_CHANGED] = True
            attrs[sc.TT_TOOL_DEFINITION_HASH] = "0123456789abcdef"
        with tracer.start_as_current_span(f"tools/call {tool}", attributes=attrs):
            pass
    provider.shutdown()
    return landed


def test_sessions_say_who_governed_them(gateway_landed: Path) -> None:
    data = str(gateway_landed)
    code, out = _run("sessions", "--data", data, "--format", "json")
    assert code == 0, out
    rows = {r["session_id"]: r for r in json.loads(out)}
    gw = rows["s-gateway"]
    assert (gw["governed_by"], gw["mcp_client_name"], gw["mcp_client_version"]) == (
        "gateway",
        "claude-code",
        "1.0.3",
    )
    assert gw["changed_tool_calls"] == 1
    assert rows["s-alpha"]["governed_by"] == "instrumentation"
    code, out = _run("sessions", "--data", data)
    assert code == 0
    header, *lines = out.splitlines()
    assert "governed_by" in header and "mcp_client_name" in header
    (gw_line,) = [line for line in lines if "s-gateway" in line]
    assert "gateway" in gw_line and "claude-code" in gw_line
    code, out = _run("sessions", "--data", data, "--governed-by", "gateway", "--format", "json")
    assert code == 0 and [r["session_id"] for r in json.loads(out)] == ["s-gateway"]
    code, out = _run("sessions", "--data", data, "--governed-by", "proxy")
    assert code == 2 and "--governed-by" in out


def test_show_marks_calls_to_a_changed_tool(gateway_landed: Path) -> None:
    data = str(gateway_landed)
    code, out = _run("show", "s-gateway", "--data", data, "--format", "json")
    assert code == 0, out
    flags = {a["tool_name"]: a["tool_definition_changed"] for a in json.loads(out)["actions"]}
    assert flags == {"list_dir": None, "read_file": True}
    code, out = _run("show", "s-gateway", "--data", data)
    assert code == 0 and "tool_definition_changed" in out
    code, out = _run("show", "s-alpha", "--data", data)
    assert code == 0 and "tool_definition_changed" not in out  # only when a tool changed


def test_show_session_in_sequence(landed: Path) -> None:
    code, out = _run("show", "s-alpha", "--data", str(landed), "--format", "json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["session"]["session_id"] == "s-alpha"
    assert [a["tool_name"] for a in doc["actions"]] == ["git_status", "git_commit", "git_reset"]
    code, out = _run("show", "s-alpha", "--data", str(landed))
    assert code == 0 and "git_reset" in out and "DENY" in out
    code, out = _run("show", "nope", "--data", str(landed))
    assert code == 2 and "no session 'nope'" in out


def test_query_reads_and_refuses_writes(landed: Path) -> None:
    code, out = _run(
        "query",
        "SELECT decision, count(*) AS n FROM actions GROUP BY 1 ORDER BY 1",
        "--data",
        str(landed),
        "--format",
        "json",
    )
    assert code == 0, out
    assert {r["decision"]: r["n"] for r in json.loads(out)} == {
        "ALLOW": 1,
        "DENY": 1,
        "REQUIRE_APPROVAL": 1,
        "REWRITE": 1,
    }
    before = sorted(iter_span_files(landed))
    for sql in ("DELETE FROM spans", "COPY spans TO '/tmp/x.csv'", "CREATE TABLE t AS SELECT 1"):
        code, out = _run("query", sql, "--data", str(landed))
        assert code == 2, (sql, out)
    code, out = _run("query", "SELEC nonsense", "--data", str(landed))
    assert code == 2 and "Error" in out
    assert sorted(iter_span_files(landed)) == before


def test_empty_data_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = _run("sessions", "--data", str(empty), "--format", "json")
    assert (code, json.loads(out)) == (0, [])
    code, out = _run("sessions", "--data", str(empty))
    assert code == 0 and "no rows" in out
    # A directory that is not there is a typo, not an empty history.
    code, out = _run("sessions", "--data", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in out


def test_query_results_of_any_type_render_in_every_format(landed: Path) -> None:
    sql = (
        "SELECT session_id, last_action_at - started_at AS took, {'k': 1} AS st,"
        " MAP {'a': 1} AS m, 'nan'::DOUBLE AS n, ['x', 'y'] AS l FROM sessions LIMIT 1"
    )
    code, out = _run("query", "--data", str(landed), sql, "--format", "json")
    assert code == 0, out
    row = json.loads(out)[0]  # strict JSON: NaN would not parse in other languages
    assert row["st"] == {"k": 1} and row["n"] is None and row["l"] == ["x", "y"]
    assert isinstance(row["took"], str) and row["took"].count(":") == 2  # an interval
    code, out = _run("query", "--data", str(landed), sql, "--format", "csv")
    assert code == 0, out
    header, first = out.splitlines()[:2]
    assert header == "session_id,took,st,m,n,l"
    assert '"{""k"": 1}","{""a"": 1}"' in first and first.endswith(',"[""x"", ""y""]"')
    # Times say they are UTC: RFC 3339 in CSV (as in JSON), a Z in tables.
    at = "SELECT TIMESTAMPTZ '2026-01-01 12:00:00.5+00' AS t"
    code, out = _run("query", "--data", str(landed), at, "--format", "csv")
    assert code == 0 and out.splitlines()[1] == "2026-01-01T12:00:00.500000+00:00"
    code, out = _run("query", "--data", str(landed), at)
    assert code == 0 and out.splitlines()[2] == "2026-01-01 12:00:00Z"
    # A separator inside a value cannot make two lists look alike.
    code, out = _run(
        "query", "--data", str(landed), "SELECT ['a;b'] AS l, ['a', 'b'] AS m", "--format", "csv"
    )
    assert code == 0 and out.splitlines()[1] == '"[""a;b""]","[""a"", ""b""]"'

    code, out = _run("query", "--data", str(landed), sql)
    assert code == 0 and "took" in out


def test_values_agents_sent_cannot_redraw_the_operators_terminal(tmp_path: Path) -> None:
    # A tool name that erases its line and draws a harmless one in its place, an agent name
    # that sets the terminal title, and a right-to-left override that reorders the text.
    tool = "git_push_force\x1b[1K\rgit_status"
    agent = "bot\x1b]0;owned\x07"
    data = tmp_path / "data"
    exporter = TooltrailSpanExporter(data_dir=data, policy=None)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attrs = {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: tool,
        sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"path": "a\u202etxt.exe"}),
        sc.TT_SESSION_ID: "s-evil",
        sc.GEN_AI_AGENT_NAME: agent,
        sc.TT_SEQUENCE: 1,
    }
    with provider.get_tracer("t").start_as_current_span("execute_tool x", attributes=attrs):
        pass
    provider.shutdown()
    outputs = [
        _run("show", "s-evil", "--data", str(data)),
        _run("sessions", "--data", str(data)),
        _run("query", "--data", str(data), "SELECT tool_name, agent_name, arguments FROM spans"),
    ]
    for code, out in outputs:
        assert code == 0, out
        assert not {"\x1b", "\r", "\x07", "\u202e"} & set(out), repr(out)
    # An error quoting a value (DuckDB's conversion error) shows it escaped too.
    code, out = _run("query", "--data", str(data), "SELECT CAST(agent_name AS INTEGER) FROM spans")
    assert code == 2 and "\x1b" not in out and "bot\\x1b]0;owned\\x07" in out, repr(out)
    show, _, query = (out for _, out in outputs)
    assert "git_push_force\\x1b[1K git_status" in show  # shown, not obeyed
    assert "bot\\x1b]0;owned\\x07" in query and "\\u202e" in query


def test_ingest_with_a_policy_that_cannot_load_lands_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - id: x\n    when: {tool: [}\n")
    data = tmp_path / "data"
    code, out = _run("ingest", str(FIXTURE), "--data", str(data), "--policy", str(bad))
    assert code == 2 and f"{bad}:4" in out
    assert not list(data.rglob("*.parquet"))


def test_ingest_good_file_then_bad_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out = _run("ingest", str(FIXTURE), "--data", str(data))
    assert code == 0, out
    expected = sum(
        len(s["spans"])
        for line in FIXTURE.read_text().splitlines()
        if line.strip()
        for rs in json.loads(line)["resourceSpans"]
        for s in rs["scopeSpans"]
    )
    assert f"landed {expected} spans" in out
    assert (data / "tooltrail.duckdb").exists()
    files_before = sorted(iter_span_files(data))
    bad = tmp_path / "bad.jsonl"
    shutil.copy(FIXTURE, bad)
    with open(bad, "a") as fh:
        fh.write('{"resourceSpans": [ this is not json\n')
    code, out = _run("ingest", str(bad), "--data", str(data))
    assert code == 2
    assert "bad.jsonl" in out and f":{len(bad.read_text().splitlines())}" in out
    assert sorted(iter_span_files(data)) == files_before  # nothing half-landed


def test_ingest_applies_policy_after_the_fact(tmp_path: Path) -> None:
    data = tmp_path / "data"
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\ndefault: ALLOW\nrules:\n"
        "  - id: no-push\n    when: {tool: git_push}\n    decision: DENY\n"
    )
    code, out = _run("ingest", str(FIXTURE), "--data", str(data), "--policy", str(policy))
    assert code == 0, out
    code, out = _run(
        "query",
        "SELECT tool_name, decision, policy_rule, enforced FROM actions "
        "WHERE tool_name = 'git_push'",
        "--data",
        str(data),
        "--format",
        "json",
    )
    rows = json.loads(out)
    assert rows and all(r["decision"] == "DENY" and r["policy_rule"] == "no-push" for r in rows)
    assert all(r["enforced"] is False for r in rows)  # decided after the fact


def test_compact_command(landed: Path) -> None:
    assert len(list(iter_span_files(landed))) > 1
    code, out = _run("compact", "--data", str(landed))
    assert code == 0, out
    assert "partition(s) rewritten" in out
    assert len(list(iter_span_files(landed))) == 1
    code, out = _run("sessions", "--data", str(landed), "--format", "json")
    assert {r["session_id"] for r in json.loads(out)} == {"s-alpha", "s-beta"}


def test_query_json_numbers_stay_numbers(landed: Path) -> None:
    code, out = _run(
        "query",
        "SELECT sum(sequence) AS total, avg(sequence) AS mean FROM actions",
        "--data",
        str(landed),
        "--format",
        "json",
    )
    assert code == 0, out
    assert json.loads(out) == [{"total": 10, "mean": 2.5}]


def test_ingesting_a_file_again_lands_nothing_twice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out = _run("ingest", str(FIXTURE), str(FIXTURE), "--data", str(data))
    assert code == 0, out
    first = pq.read_table(data / "spans").num_rows
    assert f"skipped {first} spans" in out  # the second copy in the same run
    code, out = _run("ingest", str(FIXTURE), "--data", str(data))
    assert code == 0 and out.startswith("landed 0 spans") and f"skipped {first}" in out
    ids = pq.read_table(data / "spans").column("span_id").to_pylist()
    assert len(ids) == len(set(ids)) == first


LONG_MESSAGE = "release 1.4.2: retry card payments up to five times before giving up"


@pytest.fixture
def held(tmp_path: Path) -> tuple[Path, str]:
    """A session whose commit was held and approved in the real control store, a push
    that failed, and a status with nothing to say; landed through the real exporter."""
    from opentelemetry.trace import Status, StatusCode

    from tooltrail.control import ApprovalRequest, ControlStore

    data = tmp_path / "data"
    exporter = TooltrailSpanExporter(data_dir=data, policy=None)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    commit = {"repo_path": "/r/pay", "message": LONG_MESSAGE}

    def attrs(seq: int, tool: str, decision: str, args: dict[str, str]) -> dict[str, object]:
        return {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: tool,
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps(args),
            sc.TT_SESSION_ID: "s-held",
            sc.GEN_AI_AGENT_NAME: "release-bot",
            sc.TT_SEQUENCE: seq,
            sc.TT_DECISION: decision,
            sc.TT_POLICY_RULE: "commits" if decision != "ALLOW" else "pass",
            sc.TT_ENFORCED: True,
        }

    with tracer.start_as_current_span(
        "execute_tool git_status",
        attributes=attrs(1, "git_status", "ALLOW", {"repo_path": "/r/pay"}),
    ):
        pass
    with tracer.start_as_current_span(
        "execute_tool git_commit", attributes=attrs(2, "git_commit", "REQUIRE_APPROVAL", commit)
    ) as span:
        with ControlStore(data) as store:
            filed = store.file_request(
                ApprovalRequest(
                    tool_name="git_commit",
                    arguments=commit,
                    session_id="s-held",
                    span_id=format(span.get_span_context().span_id, "016x"),
                )
            )
            store.decide(filed.approval_id, "approved", by="alice", reason="release window")
        span.set_attributes(
            {
                sc.TT_APPROVAL_ID: filed.approval_id,
                sc.TT_APPROVAL_STATUS: "approved",
                sc.TT_APPROVAL_DECIDED_BY: "alice",
            }
        )
    with tracer.start_as_current_span(
        "execute_tool git_push", attributes=attrs(3, "git_push", "ALLOW", {"repo_path": "/r/pay"})
    ) as span:
        span.set_attribute(sc.ERROR_TYPE, "tool_error")
        span.set_status(Status(StatusCode.ERROR, "remote rejected"))
    provider.shutdown()
    return data, filed.approval_id


def test_show_tells_the_approval_outcome_decider_and_reason(held: tuple[Path, str]) -> None:
    data, approval_id = held
    code, out = _run("show", "s-held", "--data", str(data), "--format", "json")
    assert code == 0, out
    actions = json.loads(out)["actions"]
    commit = actions[1]
    assert (commit["approval_outcome"], commit["approval_decided_by"]) == ("approved", "alice")
    assert commit["approval_reason"] == "release window"
    assert commit["approval_id"] == approval_id
    assert [a["outcome"] for a in actions] == ["ok", "ok", "error"]
    assert actions[0]["approval_outcome"] is None
    # json carries every value whole
    assert LONG_MESSAGE in commit["action_summary"] or LONG_MESSAGE in commit["arguments"]
    assert json.loads(commit["arguments"])["message"] == LONG_MESSAGE

    code, out = _run("show", "s-held", "--data", str(data))
    assert code == 0, out
    header, table_text = out.split("\n\n", 1)
    assert "approval_outcome" in table_text and "approved" in table_text
    assert "alice" in table_text and "release window" in table_text
    assert "UNSET" not in out and "ERROR" not in out  # words a person uses
    assert table_text.splitlines()[-1].split()[-1] == "error"  # the failed push
    for line in header.splitlines():  # no header field without a value
        key, _, value = line.partition("  ")
        assert value.strip(), f"empty header field {key!r}"


def test_show_full_and_one_action_give_whole_summaries_and_arguments(
    held: tuple[Path, str],
) -> None:
    data, _ = held
    code, cut = _run("show", "s-held", "--data", str(data))
    assert code == 0 and "…" in cut
    code, out = _run("show", "s-held", "--data", str(data), "--format", "json")
    summary = json.loads(out)["actions"][1]["action_summary"]
    assert len(summary) > 48 and summary not in cut
    code, out = _run("show", "s-held", "--data", str(data), "--full")
    assert code == 0, out
    assert summary in out  # the stored summary, whole
    code, out = _run("show", "s-held", "--data", str(data), "--action", "2")
    assert code == 0, out
    assert f'"message": "{LONG_MESSAGE}"' in out  # the arguments, whole and indented
    assert "approval_reason" in out and "release window" in out
    assert "git_status" not in out  # that one action only
    code, out = _run("show", "s-held", "--data", str(data), "--action", "2", "--format", "json")
    assert code == 0 and json.loads(out)["sequence"] == 2
    span_id = json.loads(out)["span_id"]
    code, out = _run("show", "s-held", "--data", str(data), "--action", span_id)
    assert code == 0 and f'"message": "{LONG_MESSAGE}"' in out
    assert "UNSET" not in out and "status_code" not in out
    code, out = _run("show", "s-held", "--data", str(data), "--action", "9")
    assert code == 2 and "--action 9" in out and "(it has: 1, 2, 3)" in out


def test_the_readmes_polars_snippet_reads_actions_as_tool_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's snippet, run as written against landed data holding tool and other
    spans: what it calls actions are the tool calls (the ``actions`` view's rows)."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (snippet,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
        if "tooltrail-data/spans" in block
    ]
    data = tmp_path / "tooltrail-data"
    code, out = _run("ingest", str(FIXTURE), "--data", str(data))
    assert code == 0, out
    spans = pq.read_table(data / "spans").to_pylist()
    assert {r["span_type"] for r in spans} > {"tool"}  # the data holds other spans too
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(snippet, scope)  # the documented code, as a reader would paste it
    actions = scope["actions"]
    assert set(actions["span_type"]) == {"tool"}  # type: ignore[index]
    assert len(actions) == sum(r["span_type"] == "tool" for r in spans)  # type: ignore[arg-type]


def test_shows_help_example_is_a_session_id_as_tooltrail_makes_them() -> None:
    import re

    from tooltrail.instrumentation._session import new_session_id

    code, out = _run("show", "--help")
    assert code == 0
    (example,) = re.findall(r"tooltrail show (\S+)", out)
    made = new_session_id()
    assert re.fullmatch(r"[0-9a-f]{32}", made)  # uuid4 hex: no hyphens
    assert re.fullmatch(r"[0-9a-f]{32}", example), example
