"""``tooltrail policy check | explain | replay`` (SPEC §5).

Exit codes: 0 success; 1 the command ran and found a problem (a failed inline test, or a
replay with changes under ``--fail-on-change``); 2 bad usage or bad input (a policy that
does not load, malformed ``--args``, a missing data directory).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Final

import click

from tooltrail.cli_common import CliError, domain_errors
from tooltrail.config import data_dir as default_data_dir
from tooltrail.errors import PolicyError
from tooltrail.output import FORMATS, table, terminal_safe
from tooltrail.policy import numbers
from tooltrail.policy.compiler import InlineTest
from tooltrail.policy.durations import format_duration, parse_since_seconds
from tooltrail.policy.engine import Explanation, Policy
from tooltrail.policy.loader import load_policy
from tooltrail.policy.matchers import json_equal
from tooltrail.policy.model import ANNOTATION_HINTS, Decision, ToolCall, plain

# Below this many distinct inputs a replay finishes before a progress bar is worth drawing.
PROGRESS_MIN_GROUPS: Final = 20_000
_DEFAULT_SINCE: Final = "30d"
EXPLAIN_SESSION_ID: Final = "cli-session"


def _load(path: str) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as e:
        raise CliError(str(e)) from e


def _json_option(value: str | None, option: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        # Python's json reads NaN / Infinity, which JSON has not: --format json would then
        # print a document no JSON parser accepts.
        parsed = numbers.loads(value, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:
        raise CliError(f"{option} is not valid JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise CliError(f"{option} must be a JSON object, got {type(parsed).__name__}")
    found = numbers.find_long_int(parsed)
    if found is not None:
        path, digits = found
        where = ".".join(str(step) for step in path)
        message = numbers.too_long_int_message(len(digits.lstrip("-")))
        raise CliError(f"{option}: {where}: {message}")
    return parsed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range for a JSON number")
    return number


def _annotations_option(value: str | None) -> dict[str, Any] | None:
    """``--annotations``: a JSON object whose MCP hints, when given, are booleans (null is
    the MCP default). A string like ``"yes"`` would silently read as not-read-only."""
    parsed = _json_option(value, "--annotations")
    for name in (n for pair in ANNOTATION_HINTS for n in pair):
        hint = None if parsed is None else parsed.get(name)
        if hint is not None and not isinstance(hint, bool):
            raise CliError(f"--annotations: {name} must be true or false, got {_dumps(hint)}")
    return parsed


def _dumps(value: Any) -> str:
    # Strict JSON: a non-finite number must fail loudly, never print as NaN.
    return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The CLI's one table renderer (``tooltrail.output.table``): cells hold landed values
    (agent names, rule ids, session ids) that agents chose, so its terminal escaping
    (control, CR, bidi characters shown as escapes) must apply here too."""
    return table([dict(zip(headers, row, strict=True)) for row in rows], headers)


def _csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue().rstrip("\n")


@click.group(name="policy")
def policy_cli() -> None:
    """Check, explain and replay tool-call policies (see docs/POLICY.md).

    \b
    Example:
      tooltrail policy check examples/policy-git.yaml
    """


# --- check ------------------------------------------------------------------------------


def _test_failures(policy: Policy, test: InlineTest) -> list[str]:
    decision = policy.decide(test.call)
    actual: dict[str, Any] = {
        "decision": decision.decision,
        "rule": decision.policy_rule,
        "blast_radius": decision.blast_radius,
        "target_repo": decision.target_repo,
        "target_branch": decision.target_branch,
        "target_path": decision.target_path,
        "arguments_rewritten": (
            None if decision.arguments_rewritten is None else plain(decision.arguments_rewritten)
        ),
        "reason": decision.reason,
    }
    return [
        f"{key}: expected {_dumps(expected)}, got {_dumps(actual[key])}"
        for key, expected in test.expect.items()
        if not json_equal(actual[key], expected)
    ]


def _test_label(test: InlineTest, source: str) -> str:
    owner = f"rule {test.rule_id!r}" if test.rule_id is not None else "policy"
    where = f"{source}:{test.line}" if test.line is not None else source
    call = test.call
    return f"{where}: {owner} test #{test.index + 1}: {call.tool} {_dumps(plain(call.arguments))}"


# Every tooltrail command takes --data (SPEC §5); check and explain do not read it.
_unused_data = click.option(
    "--data", "_data", default=None, metavar="DIR", help="Accepted like every command; unused."
)


@policy_cli.command("check")
@click.argument("policy_file", metavar="POLICY", type=click.Path(dir_okay=False))
@_unused_data
def check_cmd(policy_file: str, _data: str | None) -> None:
    """Validate POLICY against the schema, then run every inline `tests:` entry.

    Schema and semantic errors name the file, line and rule id (exit 2); failed tests
    print expected vs actual (exit 1).

    \b
    Example:
      tooltrail policy check examples/policy-github.yaml
    """
    policy = _load(policy_file)
    # Legal but surely mistaken (a DENY on a branch no target gives is a silent no-op):
    # said before the tests, and not an error, so a policy under edit still checks.
    for warning in policy.warnings:
        click.echo(f"WARNING {warning}")
    failed = 0
    for test in policy.tests:
        problems = _test_failures(policy, test)
        if problems:
            failed += 1
            click.echo(f"FAIL {_test_label(test, policy_file)}")
            for problem in problems:
                click.echo(f"     {problem}")
    total = len(policy.tests)
    summary = (
        f"{policy_file}: version {policy.version}, {len(policy.rules)} rules; "
        f"{total - failed} of {total} inline tests passed"
    )
    if policy.warnings:
        summary += f"; {len(policy.warnings)} warnings"
    if failed:
        click.echo(summary)
        raise click.exceptions.Exit(1)
    click.echo(f"OK {summary}")


# --- explain ----------------------------------------------------------------------------


def _explain_table(explanation: Explanation, policy: Policy) -> str:
    d = explanation.decision
    approval = "-"
    if d.approval is not None:
        approval = (
            f"timeout {format_duration(d.approval.timeout_s)}, on timeout "
            f"{d.approval.on_timeout}, approvers {', '.join(d.approval.approvers)}"
        )
    fields = [
        ("decision", d.decision),
        ("verdict", d.policy_rule),
        ("matched", ", ".join(d.policy_matched) or "-"),
        ("blast radius", d.blast_radius),
        ("target repo", d.target_repo),
        ("target branch", d.target_branch),
        ("target path", d.target_path),
        ("arguments", _dumps(plain(d.arguments))),
        (
            "rewritten",
            None if d.arguments_rewritten is None else _dumps(plain(d.arguments_rewritten)),
        ),
        ("reason", d.reason),
        ("approval", approval),
        ("policy", f"{policy.version} ({policy.source})"),
    ]
    lines = [f"{name:<14}{'-' if value is None else value}" for name, value in fields]
    lines.append("")
    lines.append("why:")
    skipped = 0
    for trace in explanation.rules:
        if not trace.applies:
            skipped += 1
            continue
        line = f"line {trace.line}" if trace.line is not None else "-"
        if trace.matched:
            lines.append(
                f"  MATCH  {trace.rule_id} ({trace.decision}, {line}): "
                + "; ".join(trace.conditions)
            )
        else:
            note = f" ({trace.note})" if trace.note else ""
            lines.append(
                f"  no     {trace.rule_id} ({trace.decision}, {line}): fails '{trace.failed}'{note}"
            )
    if skipped:
        lines.append(f"  ({skipped} rules are for other tools)")
    if explanation.base is not None:
        lines.append(f"  {explanation.base}")
    elif d.policy_matched:
        lines.append(f"  strictest matched rule wins: {d.policy_rule} ({d.decision})")
    sources = ", ".join(explanation.blast_sources) or "nothing matched: default Low"
    lines.append(f"  blast radius from: {sources}")
    return "\n".join(lines)


def _decision_csv(decision: Decision) -> str:
    obj = decision.to_json_dict()
    row = [_dumps(v) if isinstance(v, dict | list) else v for v in obj.values()]
    return _csv(list(obj), [row])


@policy_cli.command("explain")
@click.argument("policy_file", metavar="POLICY", type=click.Path(dir_okay=False))
@click.option("--tool", "tool", required=True, help="Tool name, e.g. git_commit.")
@click.option("--args", "args_json", default="{}", show_default=True, help="Arguments as JSON.")
@click.option("--agent", default=None, help="Agent name.")
@click.option("--session", default=EXPLAIN_SESSION_ID, show_default=True,
              help="Session id (rewrite templates read it; every real call has one).")  # fmt: skip
@click.option("--server", default=None, help="MCP server name.")
@click.option(
    "--annotations",
    "annotations_json",
    default=None,
    help="MCP tool annotations as JSON, e.g. '{\"readOnlyHint\": true}'.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@_unused_data
def explain_cmd(
    policy_file: str,
    tool: str,
    args_json: str,
    agent: str | None,
    session: str,
    server: str | None,
    annotations_json: str | None,
    fmt: str,
    _data: str | None,
) -> None:
    """Show the decision POLICY gives one call, and why.

    `--format json` prints exactly the SPEC §5 object.

    \b
    Example:
      tooltrail policy explain examples/policy-git.yaml --tool git_checkout \\
          --args '{"repo_path": "/src/app", "branch_name": "main"}' --session s-42
    """
    policy = _load(policy_file)
    call = ToolCall(
        tool=tool,
        arguments=_json_option(args_json, "--args") or {},
        agent=agent,
        session_id=session,
        server=server,
        annotations=_annotations_option(annotations_json),
    )
    explanation = policy.explain(call)
    if fmt == "json":
        click.echo(_dumps(explanation.decision.to_json_dict()))
    elif fmt == "csv":
        click.echo(_decision_csv(explanation.decision))
    else:
        # --args and a policy's reasons and templates may hold control characters too.
        click.echo(terminal_safe(_explain_table(explanation, policy)))


# --- replay -----------------------------------------------------------------------------


@contextmanager
def _progress_bar() -> Iterator[Any]:
    """A progress callback drawing click.progressbar on stderr for long replays only."""
    with ExitStack() as stack:
        bars: list[Any] = []
        shown = [0]

        def update(done: int, total: int) -> None:
            if not bars:
                if total < PROGRESS_MIN_GROUPS:
                    return
                bar = click.progressbar(
                    length=total, label="replaying", file=sys.stderr, show_pos=True
                )
                bars.append(stack.enter_context(bar))
            bars[0].update(done - shown[0])
            shown[0] = done

        yield update


_CSV_HEADERS: Final = (
    "section", "metric", "rule", "old_rule", "agent", "from", "to", "count",
    "session_id", "span_id", "tool", "start_time",
)  # fmt: skip


def _replay_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """The report as one long table (the csv format)."""
    rows: list[list[Any]] = []

    def add(section: str, **values: Any) -> None:
        rows.append([section] + [values.get(h) for h in _CSV_HEADERS[1:]])

    for metric in ("actions", "distinct_inputs", "changed", "decision_changes",
                   "verdict_changes", "blast_radius_changes", "newly_unmatched",
                   "changed_on_redacted", "kept_redacted"):  # fmt: skip
        add("summary", metric=metric, count=report[metric])
    for t in report["transitions"]:
        add("decision", **t)
    for r in report["by_rule"]:
        add("rule", rule=r["new_rule"], old_rule=r["old_rule"],
            **{"from": r["from"], "to": r["to"], "count": r["count"]})  # fmt: skip
    for a in report["by_agent"]:
        add("agent", **a)
    for b in report["blast_radius"]:
        add("blast_radius", **b)
    for v in report["verdicts"]:
        add("verdict", rule=v["new_rule"], old_rule=v["old_rule"], to=v["decision"],
            count=v["count"])  # fmt: skip
    for rule_id, hits in report["rule_hits"].items():
        add("rule_hits", rule=rule_id, count=hits)
    for rule_id in report["dead_rules"]:
        add("dead_rule", rule=rule_id, count=0)
    for e in report["examples"]:
        add("example", rule=e["new_rule"], old_rule=e["old_rule"], agent=e["agent"],
            session_id=e["session_id"], span_id=e["span_id"],
            tool=e["tool"], start_time=e["start_time"],
            **{"from": e["from"], "to": e["to"]})  # fmt: skip
    return rows


def _label(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _replay_table(report: Mapping[str, Any]) -> str:
    out = [
        f"replayed policy {report['policy_version']} over {report['actions']} actions "
        f"({report['distinct_inputs']} distinct inputs) in {report['data_dir']}"
        + (f", since {report['since']}" if report["since"] else ""),
        f"changed: {report['changed']} actions ({report['decision_changes']} decision, "
        f"{report['verdict_changes']} verdict only, {report['blast_radius_changes']} blast "
        f"radius); newly unmatched: {report['newly_unmatched']}",
    ]
    if report["changed_on_redacted"]:
        out.append(
            f"note: {report['changed_on_redacted']} actions landed with redacted arguments "
            "replay differently only because a rule that matched them cannot see the redacted "
            "values; not counted as changes"
        )
    if report["kept_redacted"]:
        out.append(
            f"note: {report['kept_redacted']} actions redacted on landing by this same policy "
            "version replay differently only because a rule that matched them cannot see the "
            "redacted values; they keep their landed decision"
        )
    if report["landed_versions"]:
        versions = ", ".join(f"{v} ({n})" for v, n in report["landed_versions"].items())
        out.append(f"landed with policy versions: {versions}")

    def section(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            out.extend(["", f"{title}:", _table(headers, rows)])

    section("decision transitions", ["from", "to", "count"],
            [[_label(t["from"]), t["to"], t["count"]] for t in report["transitions"]])  # fmt: skip
    section("by rule", ["old rule", "new rule", "from", "to", "count"],
            [[_label(r["old_rule"]), r["new_rule"], _label(r["from"]), r["to"], r["count"]]
             for r in report["by_rule"]])  # fmt: skip
    section("by agent", ["agent", "from", "to", "count"],
            [[_label(a["agent"]), _label(a["from"]), a["to"], a["count"]]
             for a in report["by_agent"]])  # fmt: skip
    section("blast radius changes", ["from", "to", "count"],
            [[_label(b["from"]), b["to"], b["count"]] for b in report["blast_radius"]])  # fmt: skip
    section("verdict changes (same decision)", ["old rule", "new rule", "decision", "count"],
            [[_label(v["old_rule"]), v["new_rule"], v["decision"], v["count"]]
             for v in report["verdicts"]])  # fmt: skip
    section("rule hits", ["rule", "actions"], [[k, v] for k, v in report["rule_hits"].items()])
    if report["dead_rules"]:
        out.extend(["", "dead rules (match no action): " + ", ".join(report["dead_rules"])])
    section("examples", ["from", "to", "session", "span", "tool", "agent", "new rule", "time"],
            [[_label(e["from"]), e["to"], e["session_id"], e["span_id"], e["tool"],
              _label(e["agent"]), e["new_rule"], e["start_time"]]
             for e in report["examples"]])  # fmt: skip
    # The header lines quote landed values too (policy versions as spans recorded them).
    return terminal_safe("\n".join(out))


@policy_cli.command("replay")
@click.argument("policy_file", metavar="POLICY", type=click.Path(dir_okay=False))
@click.option("--data", "data", default=None, help="Data directory [default: $TOOLTRAIL_DATA "
              "or ./tooltrail-data].")  # fmt: skip
@click.option("--since", default=_DEFAULT_SINCE, show_default=True,
              help="Only actions this recent (30d, 12h, 90m…), or 'all'.")  # fmt: skip
@click.option("--examples", "max_examples", default=5, show_default=True,
              type=click.IntRange(0, 1000),
              help="Example actions per decision transition.")  # fmt: skip
@click.option("--fail-on-change", is_flag=True, help="Exit 1 when any action would change.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def replay_cmd(
    policy_file: str,
    data: str | None,
    since: str,
    max_examples: int,
    fail_on_change: bool,
    fmt: str,
) -> None:
    """Evaluate candidate POLICY over the landed actions and report what would change:
    decision transitions per rule and per agent, blast-radius changes, newly unmatched
    actions, dead rules, and example actions with their session ids.

    \b
    Example:
      tooltrail policy replay examples/policy-git.yaml --since 7d --format json
    """
    # Imported here: duckdb is not needed by check / explain.
    from tooltrail.policy.replay import replay

    policy = _load(policy_file)
    root = default_data_dir(data)
    if not root.is_dir():
        raise CliError(f"data directory {root} does not exist (use --data DIR)")
    # Unreadable landed data and a bad --since are bad input too.
    with _progress_bar() as progress, domain_errors():
        since_s = parse_since_seconds(since)
        report = replay(
            policy,
            root,
            since_s=since_s,
            since_label=None if since_s is None else since,
            max_examples=max_examples,
            progress=progress,
        ).to_json_dict()
    if fmt == "json":
        click.echo(_dumps(report))
    elif fmt == "csv":
        click.echo(_csv(_CSV_HEADERS, _replay_rows(report)))
    else:
        click.echo(_replay_table(report))
    if fail_on_change and report["changed"]:
        raise click.exceptions.Exit(1)
