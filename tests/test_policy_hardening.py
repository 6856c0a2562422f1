"""Issue 14: no policy input can hang or crash an agent or a command. YAML alias bombs and
deep nesting are refused at load (every path that loads a policy goes through the one
loader), policy regexes run in linear time (RE2) and constructs RE2 cannot run are refused
naming rule and line, integers too long to read are named instead of a traceback, and
`policy replay` prints landed values through the CLI's terminal-escaping renderer."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tooltrail.collector.writer import ParquetSpanWriter
from tooltrail.errors import PolicyError
from tooltrail.policy import ToolCall, apply_to_row, load_policy, loads_policy
from tooltrail.policy.cli import policy_cli
from tooltrail.policy.loader import MAX_ALIAS_NODES, MAX_DEPTH
from tooltrail.policy.regex import RegexError, compile_regex
from tooltrail.schema import empty_row

ROOT = Path(__file__).resolve().parent.parent

# Nine levels of nine aliases: ~1 KB of YAML standing for 9^9 (387 million) strings.
ALIAS_BOMB = (
    "version: 1\n"
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(8)
    )
    + "rules: []\n"
)
BOMB_LINE = 6  # the alias that takes the expansion past MAX_ALIAS_NODES (*d: 9^4 = 7,381)


def run(*args: str) -> Result:
    return CliRunner().invoke(policy_cli, list(args), catch_exceptions=False)


def bounded(fn: Any, *args: Any, seconds: float = 20.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it has not returned."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} still running after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# --- 1. alias bombs ------------------------------------------------------------------------


def test_alias_bomb_is_refused_at_load_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB, encoding="utf-8")
    assert len(ALIAS_BOMB) < 1024
    with pytest.raises(PolicyError) as info:
        bounded(load_policy, path)
    message = str(info.value)
    assert message.startswith(f"{path}:{BOMB_LINE}: alias *d takes the aliases past")
    assert f"{MAX_ALIAS_NODES:,} nodes" in message and "alias bomb" in message


def test_alias_bomb_in_policy_check_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB, encoding="utf-8")
    result = bounded(run, "check", str(path))
    assert result.exit_code == 2
    assert f"{path}:{BOMB_LINE}: alias *d" in result.output


def test_aliases_a_policy_uses_still_load() -> None:
    """Merge keys and a shared `when:` block are what aliases are for: within budget."""
    policy = loads_policy(
        """
        version: 1
        rules:
          - id: a
            when: &w {tool: deploy, args: {env: [prod, staging]}}
            decision: DENY
          - id: b
            when: {<<: *w, tool: other}
            decision: DENY
          - id: c
            when: *w
            decision: REQUIRE_APPROVAL
        """.replace("\n        ", "\n")
    )
    assert policy.decide(ToolCall("other", {"env": "prod"})).policy_rule == "b"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("version: 1\nx: &a [1, *a]\n", 2, "alias *a is inside the node it names (a cycle)"),
        (
            "version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n",
            2,
            f"nested deeper than {MAX_DEPTH} levels",
        ),
    ],
)
def test_cycles_and_deep_nesting_are_refused_not_a_traceback(
    text: str, line: int, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        bounded(loads_policy, text, "p.yaml")
    assert str(info.value) == f"p.yaml:{line}: {message}"


def test_deep_python_mapping_is_refused_naming_the_place() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(3000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(PolicyError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_policy({"version": 1, "tests": [{"call": {"tool": "t", "args": deep}}]})


AGENT = """
import tooltrail.instrumentation as tt

tt.configure(enforce=True)

@tt.tool
def git_status() -> str:
    print("RAN")
    return "clean"

try:
    git_status()
except tt.ToolCallDenied as e:
    print("DENIED", e.rule, e.reason)
"""


def test_configure_and_the_exporter_refuse_the_bomb(tmp_path: Path) -> None:
    """configure() (a real agent process, TOOLTRAIL_POLICY) and the exporter's hook load
    through the same loader: both refuse at once and fail closed (every call denied, every
    row marked policy-error) instead of hanging on the expansion."""
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB, encoding="utf-8")
    env = {**os.environ, "TOOLTRAIL_POLICY": str(path), "TOOLTRAIL_DATA": str(tmp_path / "d")}
    done = subprocess.run(
        [sys.executable, "-c", AGENT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "RAN" not in done.stdout
    assert done.stdout.startswith("DENIED policy-error"), done.stdout + done.stderr
    assert f"{path}:{BOMB_LINE}: alias *d" in done.stdout

    from tooltrail.collector.pipeline import load_row_hook

    hook, error = bounded(load_row_hook, str(path))
    assert hook is not None and error is not None
    assert error.startswith(f"{path}:{BOMB_LINE}: alias *d")


# --- 2. regexes in linear time ------------------------------------------------------------


def test_catastrophic_regex_runs_in_linear_time() -> None:
    """`(a+)+$` took 8 s on 26 characters with Python's backtracking engine."""
    policy = loads_policy(
        "version: 1\nrules:\n  - id: r\n    when: {tool: t, args: {s: {regex: '(a+)+$'}}}\n"
        "    decision: DENY\n"
    )
    for n in (26, 30, 100_000):
        call = ToolCall("t", {"s": "a" * n + "!"})
        decision = bounded(policy.decide, call, seconds=5.0)
        assert decision.decision == "ALLOW"
    assert policy.decide(ToolCall("t", {"s": "xaaa"})).decision == "DENY"


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        (r"(a)\1", r"a backreference (\1)"),
        ("(?=a)b", "a lookahead (?=...)"),
        ("(?!a)b", "a negative lookahead (?!...)"),
        ("(?<=a)b", "a lookbehind (?<=...)"),
        ("(?<!a)b", "a negative lookbehind (?<!...)"),
        ("(?P<x>a)(?P=x)", "a named backreference (?P=name)"),
        ("(?>a+)b", "an atomic group (?>...)"),
        ("a*+b", "a possessive repeat (*+)"),
    ],
)
def test_unsupported_constructs_are_refused_naming_rule_line_and_construct(
    pattern: str, construct: str, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nrules:\n  - id: ok\n    when: {tool: a}\n    decision: DENY\n"
        "  - id: slow\n    when:\n      tool: t\n"
        f"      args: {{s: {{regex: {json.dumps(pattern)}}}}}\n"
        "    decision: DENY\n",
        encoding="utf-8",
    )
    result = run("check", str(path))
    assert result.exit_code == 2
    assert result.output.startswith(
        f"Error: {path}:9: rule 'slow' (rules[1].when.args.s.regex): regex {pattern!r} uses "
        f"{construct}, which is not supported: policy regexes run in linear time (RE2 syntax)"
    ), result.output
    assert "re2.cc" not in result.output  # RE2's own logging stays off


def test_redaction_regexes_are_checked_too() -> None:
    text = (
        "version: 1\nrules:\n  - id: scrub\n    when: {tool: t}\n    decision: REWRITE\n"
        "    rewrite: {redact: [{regex: '(?<=token=)\\w+'}]}\n"
    )
    with pytest.raises(PolicyError) as info:
        loads_policy(text, "p.yaml")
    assert "p.yaml:6: rule 'scrub' (rules[0].rewrite.redact[0].regex)" in str(info.value)
    assert "a lookbehind (?<=...)" in str(info.value)


def test_a_broken_regex_keeps_its_plain_error() -> None:
    with pytest.raises(RegexError, match=r"^bad regex '\(x': missing \)"):
        compile_regex("(x")


def test_regex_semantics_the_engine_relies_on() -> None:
    """Searched anywhere; ^/$ anchor the whole text ($ also before a final newline, as in
    Python); (?i) folds Unicode case; `.` and classes are per character; \\d is Unicode as
    in Python; lone surrogates (JSON can carry them) are matched around, not a crash; sub
    replaces every match literally."""
    assert compile_regex("ghp_").search("token ghp_x")
    assert not compile_regex("^main$").search("x main")
    assert compile_regex("^main$").search("main")
    assert compile_regex("^main$").search("main\n")  # as Python's $ (test_policy_regex_semantics)
    assert compile_regex("(?i)straße").search("STRAßE")
    assert compile_regex("(?i)é").search("É")
    assert compile_regex("^.$").search("é") and compile_regex("^.$").search("😀")
    assert compile_regex(r"\d").search("7") and compile_regex(r"\d").search("٣")
    assert compile_regex(r"\pN").search("٣")
    assert compile_regex("secret").search("\ud800 secret")
    rx = compile_regex("t[0-9]+")
    assert rx.subn("[R]", "é t1 \ud800 t22 \\1") == ("é [R] \ud800 [R] \\1", 2)
    assert rx.sub(r"\1[R]", "t1") == r"\1[R]"  # the replacement is literal
    assert compile_regex("x").subn("[R]", "abc") == ("abc", 0)


def test_rewrite_redaction_uses_the_linear_engine_on_results() -> None:
    policy = loads_policy(
        "version: 1\nrules:\n  - id: scrub\n    when: {tool: t}\n    decision: REWRITE\n"
        "    rewrite: {redact: [{regex: '(a+)+b'}]}\n"
    )
    decision = bounded(policy.decide, ToolCall("t", {"s": "a" * 50_000 + "!", "k": "aab"}))
    assert decision.arguments_rewritten == {"s": "a" * 50_000 + "!", "k": "[REDACTED]"}


# --- 3. integers longer than Python reads ----------------------------------------------------


def _policy_file(tmp_path: Path, matcher: str) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(
        "version: 1\nrules:\n  - id: big\n"
        f"    when: {{tool: t, args: {{n: {matcher}}}}}\n    decision: DENY\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("matcher", "message"),
    [
        ("1" + "0" * 5000, "rule 'big' (rules[0]): an integer of 5,001 digits is longer than"),
        ("0x" + "f" * 5000, "rule 'big' (rules[0]): an integer of 5,002 digits is longer than"),
        (
            "{gt: 1" + "0" * 400 + "}",
            "rule 'big' (rules[0].when.args.n.gt): gt: the number is out of range",
        ),
    ],
)
def test_policy_check_names_a_too_long_integer(matcher: str, message: str, tmp_path: Path) -> None:
    path = _policy_file(tmp_path, matcher)
    result = run("check", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}:4: {message}" in result.output


def test_explain_args_names_the_field_of_a_too_long_integer(tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "{gt: 5}")
    args = '{"x": {"n": [1, -1' + "0" * 5000 + "]}}"
    result = run("explain", str(path), "--tool", "t", "--args", args)
    assert result.exit_code == 2
    assert result.output.startswith(
        "Error: --args: x.n.1: an integer of 5,001 digits is longer than the 4,300 digits"
    )


def test_explain_args_nested_past_the_parser_is_exit_2_not_a_traceback(tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "{gt: 5}")
    args = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    result = run("explain", str(path), "--tool", "t", "--args", args)
    assert result.exit_code == 2
    assert result.output.startswith("Error: --args is not valid JSON: maximum recursion depth")


def test_large_integers_compare_exactly_and_never_crash_decide(tmp_path: Path) -> None:
    """An int past 1.8e308 (but within the digit limit) against a float bound: it was
    float()-ed and raised OverflowError inside decide()."""
    policy = load_policy(_policy_file(tmp_path, "{gt: 5}"))
    big = 10**4000
    assert policy.decide(ToolCall("t", {"n": big})).decision == "DENY"
    assert policy.decide(ToolCall("t", {"n": -big})).decision == "ALLOW"
    result = run("explain", str(tmp_path / "big.yaml"), "--tool", "t", "--args",
                 '{"n": 1' + "0" * 4000 + "}")  # fmt: skip
    assert result.exit_code == 0 and result.output.startswith("decision      DENY")
    glob = loads_policy(
        "version: 1\nrules:\n  - id: g\n    when: {tool: t, args: {n: '1*'}}\n    decision: DENY\n"
    )
    # Past str()'s digit limit a glob still sees its digits (no ValueError, no blind spot).
    assert glob.decide(ToolCall("t", {"n": 10**5000})).decision == "DENY"


def test_replay_keeps_a_landed_too_long_integer_as_text(tmp_path: Path) -> None:
    policy = loads_policy(
        "version: 1\nrules:\n  - id: g\n    when: {tool: t, args: {n: '1*'}}\n    decision: DENY\n"
    )
    row = empty_row()
    row.update(trace_id="t1", span_id="sp1", span_type="tool", tool_name="t",
               arguments='{"n": 1' + "0" * 5000 + "}", session_id="s",
               start_time=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))  # fmt: skip
    data = tmp_path / "data"
    ParquetSpanWriter(data).write([row])
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nrules:\n  - id: g\n    when: {tool: t, args: {n: '1*'}}\n    decision: DENY\n",
        encoding="utf-8",
    )
    result = run("replay", str(path), "--data", str(data), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["actions"] == 1 and report["rule_hits"] == {"g": 1}
    assert policy.version == report["policy_version"]


# --- 4. one terminal-escaping renderer for replay --------------------------------------------

HOSTILE_AGENT = "evil\x1b[2K\rgit_status\u202eagent"


def test_replay_table_escapes_landed_values(tmp_path: Path) -> None:
    landed = load_policy(ROOT / "examples" / "policy-git.yaml")
    rows = []
    for i in range(3):
        row = empty_row()
        row.update(trace_id=f"t{i}", span_id=f"sp{i}", span_type="tool", tool_name="git_reset",
                   arguments=json.dumps({"repo_path": "/src/app"}), session_id="s\x1b]0;x\x07",
                   agent_name=HOSTILE_AGENT,
                   start_time=dt.datetime.now(dt.UTC) - dt.timedelta(hours=i + 1))  # fmt: skip
        apply_to_row(landed, row)
        rows.append(row)
    data = tmp_path / "data"
    ParquetSpanWriter(data).write(rows)
    text = (ROOT / "examples" / "policy-git.yaml").read_text(encoding="utf-8")
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        text.replace("when: {tool: git_reset}\n    decision: DENY",
                     "when: {tool: git_reset}\n    decision: ALLOW")
        .replace("expect: {decision: DENY, blast_radius: High}", "expect: {decision: ALLOW}"),
        encoding="utf-8",
    )  # fmt: skip
    result = run("replay", str(candidate), "--data", str(data))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "by agent:" in out and "examples:" in out
    for raw in ("\x1b", "\r", "\u202e", "\x07"):
        assert raw not in out
    assert "evil\\x1b[2K git_status\\u202eagent" in out
    assert "s\\x1b]0;x\\x07" in out
