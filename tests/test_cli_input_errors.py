"""Bad input found by walking the docs as a new user: each is refused with a clear error
naming what is wrong (exit 2), before anything is printed or changed, and never read as
something else (a mistyped anchor as tampering, an ignored option as accepted)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from tooltrail import semconv as sc
from tooltrail.cli import cli
from tooltrail.collector.exporter import TooltrailSpanExporter

SESSION = "sess-newuser"


@pytest.fixture(autouse=True)
def _own_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This test's chain signing key and saved logins, never the user's.
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("TOOLTRAIL_TOKEN", raising=False)
    monkeypatch.delenv("TOOLTRAIL_DATA", raising=False)


class _Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory holding one session of one ALLOWed call, landed (and chained) by
    the real exporter."""
    keep = _Keep()
    provider = TracerProvider()
    provider.add_span_processor(keep)
    start = int(dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC).timestamp() * 1e9)
    span = provider.get_tracer("test").start_span(
        "execute_tool git_status",
        start_time=start,
        attributes={
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_status",
            sc.TT_SESSION_ID: SESSION,
            sc.GEN_AI_AGENT_NAME: "release-bot",
            sc.TT_SEQUENCE: 1,
            sc.TT_DECISION: "ALLOW",
            sc.TT_POLICY_RULE: "pass",
            sc.TT_ENFORCED: True,
            sc.TT_BLAST_RADIUS: "Low",
        },
    )
    span.end(end_time=start + 5_000_000)
    provider.shutdown()
    root = tmp_path / "data"
    exporter = TooltrailSpanExporter(root, buffer_rows=0)
    exporter.export(keep.spans)
    exporter.shutdown()
    return root


def _run(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def _head(data: Path) -> str:
    code, out, _ = _run("verify", "--data", str(data))
    assert code == 0, out
    (line,) = [line for line in out.splitlines() if line.startswith("head ")]
    return line.split()[1]


def test_a_shortened_anchor_is_bad_input_not_a_rewritten_ledger(data: Path) -> None:
    """An auditor who pastes part of a head must not be told the ledger was tampered with."""
    head = _head(data)
    code, out, err = _run("verify", "--data", str(data), "--anchor", head[:16])
    assert code == 2, out
    assert f"--anchor '{head[:16]}'" in err and "64 hex digits" in err
    assert "BROKEN" not in out
    code, out, err = _run("verify", "--data", str(data), "--anchor", "not-a-head")
    assert code == 2 and "--anchor 'not-a-head'" in err


def test_a_whole_anchor_is_checked_whatever_its_case(data: Path) -> None:
    head = _head(data)
    code, out, _ = _run("verify", "--data", str(data), "--anchor", f" {head.upper()} ")
    assert code == 0 and out.startswith("OK"), out
    other = "0" * 64  # well formed, but no record of this ledger: what tampering looks like
    code, out, _ = _run("verify", "--data", str(data), "--anchor", other)
    assert code == 1 and "BROKEN ledger: the anchored record" in out


def test_show_only_without_trace_is_refused_not_ignored(data: Path) -> None:
    code, out, err = _run("show", SESSION, "--data", str(data), "--only", "tools")
    assert code == 2 and out == ""
    assert "--only tools" in err and "--trace" in err
    code, out, _ = _run("show", SESSION, "--data", str(data), "--trace", "--only", "tools")
    assert code == 0 and "git_status" in out


def test_tail_with_a_bad_url_prints_nothing_before_its_error(tmp_path: Path) -> None:
    """docs/EVENTS.md: bad input exits 2 before printing anything (no table header)."""
    code, out, err = _run("tail", "--url", "collector:4318", "--since", "all")
    assert code == 2 and out == ""
    assert "--url 'collector:4318'" in err and "http://" in err


def test_a_non_admin_adding_a_webhook_is_told_it_is_about_webhooks(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    code, out, err = _run("users", "add", "root", "--data", str(root), "--role", "admin")
    assert code == 0, err
    admin = out.splitlines()[-1]
    code, out, err = _run(
        "users",
        "add",
        "alice",
        "--data",
        str(root),
        "--role",
        "approver",
        env={"TOOLTRAIL_TOKEN": admin},
    )
    assert code == 0, err
    alice = out.splitlines()[-1]
    hook = ["webhooks", "add", "http://127.0.0.1:9/hook", "--data", str(root)]
    code, _, err = _run(*hook, env={"TOOLTRAIL_TOKEN": alice})
    assert code == 2
    assert "'alice' (approver) may not manage webhooks" in err and "admin" in err
    code, out, _ = _run("webhooks", "list", "--data", str(root), env={"TOOLTRAIL_TOKEN": admin})
    assert code == 0 and "127.0.0.1:9" not in out  # nothing was added


def test_proxy_wrap_has_an_example_and_a_section_in_the_reference() -> None:
    """`proxy wrap` is read by `proxy` itself, so the group walk of the help tests and of
    docs/CLI.md missed it: its help had no example and its options were in no reference."""
    result = CliRunner().invoke(cli, ["proxy", "wrap", "--help"])
    assert result.exit_code == 0 and "proxy wrap [OPTIONS] CONFIG_FILE" in result.stdout
    assert "Example:" in result.stdout and "--undo" in result.stdout
    reference = (Path(__file__).parent.parent / "docs" / "CLI.md").read_text(encoding="utf-8")
    assert "## tooltrail proxy wrap\n" in reference


@pytest.mark.parametrize("command", [5, ["npx", "-y", "server"], "", None])
def test_wrap_refuses_a_server_whose_command_is_not_a_string(
    tmp_path: Path, command: object
) -> None:
    """Such an entry was reported as 'not stdio, left as is' (exit 0): a client that starts
    it anyway would run it outside the gateway. Refused whole, the file left as it was."""
    import json

    config = tmp_path / "claude_desktop_config.json"
    servers = {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem"]},
        "odd": {"command": command},
        "remote": {"url": "https://mcp.example.com/mcp"},
    }
    text = json.dumps({"mcpServers": servers}, indent=1)
    config.write_text(text)
    code, out, err = _run("proxy", "wrap", str(config), "--data", str(tmp_path / "data"))
    assert code == 2, out
    assert "mcpServers.odd.command" in err and str(config) in err
    assert config.read_text() == text
    assert not (tmp_path / "claude_desktop_config.json.tooltrail-backup").exists()


@pytest.mark.parametrize("follow", [[], ["--follow"]])
def test_tail_of_a_directory_that_does_not_exist_is_a_typo_reported(
    tmp_path: Path, follow: list[str]
) -> None:
    """It printed a header and exited 0 (or followed nothing forever with --follow), where
    every other reading command names the missing directory."""
    missing = tmp_path / "tooltrail-dta"
    code, out, err = _run("tail", "--data", str(missing), "--since", "all", *follow)
    assert code == 2 and out == ""
    assert f"data directory {missing} does not exist" in err
    assert not missing.exists()
