"""Whole agent processes: the one-line ``configure()``, the zero-code
``opentelemetry-instrument`` run, and what the agent side imports. Spans are read back
from the Parquet files they landed in; effects are checked in a real git repository."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from git_support import clean_env, git, init_repo

AGENTS = Path(__file__).parent / "agents"
BIN = Path(sys.executable).parent
HEAVY = ("duckdb", "polars", "streamlit")
POLICY = """
version: 1
rules:
  - id: no-forbidden
    when: {tool: git_create_branch, args: {branch_name: "forbidden-*"}}
    decision: DENY
    reason: Reserved branch names
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "repo")


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    return out


def landed(data: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(data / "spans").to_pylist()
    return rows


def tool_rows(data: Path) -> list[dict[str, Any]]:
    return sorted(
        (r for r in landed(data) if r["span_type"] == "tool"), key=lambda r: r["sequence"]
    )


def test_agent_side_import_loads_no_heavy_module() -> None:
    code = (
        "import sys, tooltrail.instrumentation\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = run([sys.executable, "-c", code], clean_env())
    assert out.stdout.strip() == "[]"


def test_configure_one_line_lands_enforced_spans(
    tmp_path: Path, repo: Path, policy_file: Path
) -> None:
    data = tmp_path / "data"
    out = run(
        [
            sys.executable,
            str(AGENTS / "configured_agent.py"),
            str(data),
            str(policy_file),
            str(repo),
        ],
        clean_env(),
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["planned"] == "plan for ship it"
    assert report["git"] == [
        {"branch": "feature-ok", "is_error": False},
        {"branch": "forbidden-one", "is_error": True},
    ]
    assert report["created_provider"] and report["mcp_instrumented"]
    assert report["heavy_after_configure"] == report["heavy_at_exit"] == []
    assert git(repo, "branch", "--list", "feature-ok")
    assert not git(repo, "branch", "--list", "forbidden-one")

    rows = tool_rows(data)
    assert [(r["tool_name"], r["sequence"], r["decision"]) for r in rows] == [
        ("plan", 1, "ALLOW"),
        ("git_create_branch", 2, "ALLOW"),
        ("git_create_branch", 3, "DENY"),
    ]
    for r in rows:
        assert r["session_id"] == "configured-session"
        assert r["agent_name"] == "configured-agent"
        assert r["service_name"] == "configured-agent"
        assert r["trigger"] == "manual"
        assert r["enforced"] is True
        assert r["policy_version"] == report["policy_version"]
    assert rows[2]["policy_rule"] == "no-forbidden"
    assert rows[2]["mcp_server"] == "mcp-git"
    assert json.loads(rows[2]["arguments"])["branch_name"] == "forbidden-one"
    # One row per tool call: mcp's own request span is folded into ours.
    assert not [r for r in landed(data) if r["name"].startswith("MCP send tools/call")]


def test_opentelemetry_instrument_zero_code_run_lands_spans(
    tmp_path: Path, repo: Path, policy_file: Path
) -> None:
    configurators = {ep.name: ep.value for ep in entry_points(group="opentelemetry_configurator")}
    instrumentors = {ep.name: ep.value for ep in entry_points(group="opentelemetry_instrumentor")}
    assert instrumentors.get("tooltrail_mcp") == "tooltrail.instrumentation.mcp:McpInstrumentor"
    # Without a configurator, opentelemetry-instrument sets up no SDK and nothing lands.
    assert configurators.get("tooltrail") == (
        "tooltrail.instrumentation.autoconfig:TooltrailConfigurator"
    ), (
        "pyproject.toml needs [project.entry-points.opentelemetry_configurator] "
        'tooltrail = "tooltrail.instrumentation.autoconfig:TooltrailConfigurator" '
        "(then reinstall: pip install --no-deps -e .)"
    )
    data = tmp_path / "data"
    env = clean_env(
        TOOLTRAIL_DATA=str(data),
        TOOLTRAIL_POLICY=str(policy_file),
        TOOLTRAIL_ENFORCE="1",
        TOOLTRAIL_AGENT_NAME="zero-code-agent",
        TOOLTRAIL_SESSION_ID="zero-code-session",
        # Another MCP instrumentation (e.g. OpenLLMetry's, entry point "mcp") may be
        # installed beside ours; this run is about ours alone.
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="mcp",
    )
    out = run(
        [
            str(BIN / "opentelemetry-instrument"),
            sys.executable,
            str(AGENTS / "git_agent.py"),
            str(repo),
            "zc-ok",
            "forbidden-zc",
        ],
        env,
    )
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["is_error"] for r in results] == [False, False, True]
    assert json.loads(results[2]["text"])["rule"] == "no-forbidden"
    assert git(repo, "branch", "--list", "zc-ok")
    assert not git(repo, "branch", "--list", "forbidden-zc")

    rows = tool_rows(data)
    assert [(r["tool_name"], r["decision"]) for r in rows] == [
        ("git_status", "ALLOW"),
        ("git_create_branch", "ALLOW"),
        ("git_create_branch", "DENY"),
    ]
    assert [r["sequence"] for r in rows] == [1, 2, 3]
    assert {r["session_id"] for r in rows} == {"zero-code-session"}
    assert {r["agent_name"] for r in rows} == {"zero-code-agent"}
    assert {r["service_name"] for r in rows} == {"zero-code-agent"}
    assert {r["mcp_server"] for r in rows} == {"mcp-git"}
    assert all(r["enforced"] is True for r in rows)


def test_configure_joins_an_application_provider_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = textwrap.dedent(
        f"""
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import tooltrail.instrumentation as tt

        mine = InMemorySpanExporter()
        app = TracerProvider()
        app.add_span_processor(SimpleSpanProcessor(mine))
        trace.set_tracer_provider(app)
        first = tt.configure(data_dir={str(data)!r})
        again = tt.configure(data_dir={str(data)!r}, agent_name="second")

        @tt.tool
        def lookup(key: str) -> str:
            return key.upper()

        lookup("a")
        app.force_flush()
        print(json.dumps({{
            "same_provider": first.tracer_provider is app and again.tracer_provider is app,
            "created": first.created_provider,
            "app_saw": [s.name for s in mine.get_finished_spans()],
        }}))
        """
    )
    out = run([sys.executable, "-c", code], clean_env())
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"same_provider": True, "created": False, "app_saw": ["execute_tool lookup"]}
    rows = tool_rows(data)
    assert [(r["tool_name"], r["agent_name"]) for r in rows] == [("lookup", "second")]
    # Not enforcing: the exporter had no policy, so nothing was decided at call time.
    assert rows[0]["enforced"] is not True


def test_configure_again_hands_the_exporter_its_new_policy(tmp_path: Path) -> None:
    # Not enforcing, the exporter decides after the fact: a second configure() with
    # another policy must change its verdicts, as it changes enforcement's.
    data = tmp_path / "data"
    deny, allow = tmp_path / "deny.yaml", tmp_path / "allow.yaml"
    deny.write_text(
        "version: 1\nrules:\n  - id: no-act\n    when: {tool: act}\n    decision: DENY\n"
    )
    allow.write_text("version: 1\ndefault: ALLOW\nrules: []\n")
    missing = tmp_path / "missing.yaml"
    code = textwrap.dedent(
        f"""
        import json
        import tooltrail.instrumentation as tt

        @tt.tool
        def act(n: int) -> int:
            return n

        first = tt.configure(data_dir={str(data)!r}, policy={str(deny)!r})
        act(1)
        tt.configure(data_dir={str(data)!r}, policy={str(allow)!r})
        act(2)
        broken = tt.configure(data_dir={str(data)!r}, policy={str(missing)!r})
        act(3)
        print(json.dumps({{"first": first.policy_error, "broken": broken.policy_error}}))
        """
    )
    out = run([sys.executable, "-c", code], clean_env())
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["first"] is None
    assert report["broken"] is not None and "missing.yaml" in report["broken"]
    rows = tool_rows(data)
    assert [(r["decision"], r["policy_rule"], r["enforced"]) for r in rows] == [
        ("DENY", "no-act", False),
        ("ALLOW", "pass", False),
        (None, "policy-error", False),
    ]


def test_zero_code_with_otlp_beside_tooltrail_uses_the_installed_http_exporter(
    tmp_path: Path,
) -> None:
    # `otlp` is gRPC to the SDK unless a protocol is set; only the HTTP exporter is
    # installed, and the SDK then failed to start: not even tooltrail's spans landed.
    import http.server
    import threading

    posts: list[str] = []

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script = tmp_path / "agent.py"
    script.write_text(
        "import tooltrail.instrumentation as tt\n"
        "@tt.tool\n"
        "def lookup(key: str) -> str:\n"
        "    return key\n"
        "lookup('a')\n"
        "lookup('b')\n"
    )
    data = tmp_path / "data"
    env = clean_env(
        TOOLTRAIL_DATA=str(data),
        OTEL_TRACES_EXPORTER="tooltrail,otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
    )
    try:
        out = run([str(BIN / "opentelemetry-instrument"), sys.executable, str(script)], env)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert "Failed to auto initialize" not in out.stderr
    assert [r["tool_name"] for r in tool_rows(data)] == ["lookup", "lookup"]
    assert "/v1/traces" in posts  # the OTLP/HTTP exporter sent them too


def test_an_agent_given_only_the_collector_url_is_told_its_spans_land_locally(
    tmp_path: Path,
) -> None:
    # TOOLTRAIL_COLLECTOR_URL carries approvals and session control, not spans: a new user
    # who sets only it would look for the spans on the collector and never find them.
    script = (
        "import logging; logging.basicConfig()\n"
        "import sys, tooltrail.instrumentation as tt\n"
        "tt.configure(enforce=False, data_dir=sys.argv[1] if len(sys.argv) > 1 else None)\n"
    )
    env = clean_env() | {"TOOLTRAIL_COLLECTOR_URL": "http://127.0.0.1:9"}
    env.pop("TOOLTRAIL_DATA", None)
    said = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert said.returncode == 0, said.stderr
    assert "carries approvals and session control only" in said.stderr
    assert f"spans land in {tmp_path / 'tooltrail-data'}" in said.stderr
    assert "http://127.0.0.1:9/v1/traces" in said.stderr
    # Landing locally on purpose (a data directory named): nothing to say.
    chosen = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "d")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert chosen.returncode == 0, chosen.stderr
    assert "carries approvals and session control only" not in chosen.stderr
