"""Policy engine behaviour: conditions, targets, combination, blast radius, presets,
rewrites, redaction and fail-closed evaluation (SPEC §4)."""

from __future__ import annotations

import json
import string
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tooltrail.policy import (
    REDACTED,
    STRICTNESS,
    Decision,
    Policy,
    ToolCall,
    apply_to_row,
    load_policy,
    loads_policy,
    policy_error_decision,
)
from tooltrail.schema import BLAST_RADII, DECISIONS, empty_row


def pol(text: str) -> Policy:
    return loads_policy(textwrap.dedent(text))


def rule_policy(when: dict[str, Any], decision: str = "DENY", **extra: Any) -> Policy:
    """A one-rule policy (default ALLOW) whose rule id is `r`."""
    rule: dict[str, Any] = {"id": "r", "when": when, "decision": decision, **extra}
    return load_policy({"version": 1, "rules": [rule]})


def matches(when: dict[str, Any], call: ToolCall) -> bool:
    decision = rule_policy(when).decide(call)
    return decision.policy_matched == ("r",)


CALL = ToolCall(
    tool="git_commit",
    arguments={
        "repo_path": "/src/app",
        "branch_name": "feature/login/v2",
        "max_count": 150,
        "count_text": "150",
        "force": False,
        "files": ["src/a.py", "deploy/prod.env"],
        "options": {"author": {"email": "bot@example.com"}},
        "commits": [{"sha": "abc", "message": "fix"}, {"sha": "def", "message": "wip"}],
        "dotted.key": "literal",
        "ratio": 1.0,
    },
    agent="coder-1",
    session_id="s-1",
    server="git",
)


# --- conditions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"tool": "git_commit"}, True),
        ({"tool": "git_*"}, True),
        ({"tool": "GIT_*"}, False),  # globs are case-sensitive
        ({"tool": ["git_reset", "git_c*"]}, True),  # a list means any of them
        ({"tools": ["git_reset"]}, False),
        ({"agent": "coder-*"}, True),
        ({"agent": ["reviewer", "tester"]}, False),
        ({"server": "git"}, True),
        ({"server": "github"}, False),
        ({"args": {"branch_name": "feature/*"}}, True),  # `*` crosses `/` (fnmatch)
        ({"args": {"branch_name": "feature"}}, False),  # a plain string is a glob: exact here
        ({"args": {"branch_name": ["main", "feature/*/v?"]}}, True),
        ({"args": {"branch_name": {"regex": "login"}}}, True),  # regex searches
        ({"args": {"branch_name": {"regex": "^login"}}}, False),
        ({"args": {"max_count": {"gt": 100}}}, True),
        ({"args": {"max_count": {"gt": 150}}}, False),
        ({"args": {"max_count": {"gte": 150}}}, True),
        ({"args": {"max_count": {"lt": 150}}}, False),
        ({"args": {"max_count": {"lte": 150, "gt": 149}}}, True),  # operators combine (and)
        ({"args": {"count_text": {"gt": 100}}}, True),  # numeric strings compare as numbers
        ({"args": {"branch_name": {"gt": 0}}}, False),  # non-numbers never compare
        ({"args": {"force": {"gt": -1}}}, False),  # booleans are not numbers
        ({"args": {"max_count": {"in": [100, 150]}}}, True),
        ({"args": {"max_count": {"in": ["150"]}}}, False),  # JSON equality: "150" != 150
        ({"args": {"force": {"in": [0]}}}, False),  # JSON equality: false != 0
        ({"args": {"force": False}}, True),  # a bare non-string means equals
        ({"args": {"force": {"equals": False}}}, True),
        ({"args": {"ratio": {"equals": 1}}}, True),  # 1 == 1.0 in JSON
        ({"args": {"options": {"equals": {"author": {"email": "bot@example.com"}}}}}, True),
        ({"args": {"commits": {"equals": [{"sha": "abc", "message": "fix"}]}}}, False),
        ({"args": {"max_count": 150}}, True),
        ({"args": {"options.author.email": "*@example.com"}}, True),  # dotted paths
        ({"args": {"options.author.name": {"exists": True}}}, False),
        ({"args": {"options.author.name": {"exists": False}}}, True),
        ({"args": {"missing": "*"}}, False),  # absent never matches a glob
        ({"args": {"files": "*.env"}}, True),  # list values: any element
        ({"args": {"files": "*.pem"}}, False),
        ({"args": {"files.0": "src/*"}}, True),  # numeric segment indexes
        ({"args": {"files.1": "src/*"}}, False),
        ({"args": {"commits.message": "wip"}}, True),  # fan-out over a list of objects
        ({"args": {"commits.message": "release"}}, False),
        ({"args": {"dotted.key": "literal"}}, True),  # a literal dotted key is found first
        ({"tool": "git_commit", "agent": "coder-*", "args": {"max_count": {"gt": 1000}}}, False),
    ],
)
def test_condition_kinds(when: dict[str, Any], expected: bool) -> None:
    assert matches(when, CALL) is expected


def test_repo_branch_path_conditions_use_extracted_targets() -> None:
    policy = pol(
        """
        version: 1
        targets:
          - {tools: ["git_*"], repo: "{repo_path}", branch: "{branch_name}", path: "{files.0}"}
        rules:
          - {id: repo, when: {repo: "/src/*"}, decision: DENY}
          - {id: branch, when: {branch: ["main", "feature/*"]}, decision: DENY}
          - {id: path, when: {path: "src/*.py"}, decision: DENY}
          - {id: other-repo, when: {repo: "/srv/*"}, decision: DENY}
        """
    )
    assert policy.decide(CALL).policy_matched == ("repo", "branch", "path")
    # No targets for a tool outside `targets:` -> target conditions cannot match.
    other = ToolCall("fetch", dict(CALL.arguments))
    assert policy.decide(other).policy_matched == ()


@pytest.mark.parametrize(
    ("annotations", "read_only", "destructive"),
    [
        (None, None, None),  # unknown: neither condition can match
        ({}, False, True),  # known, all MCP defaults: not read-only, destructive
        ({"readOnlyHint": True}, True, False),  # read-only tools default to non-destructive
        ({"readOnlyHint": False, "destructiveHint": False}, False, False),
        ({"read_only_hint": True}, True, False),  # snake_case accepted
        ({"destructiveHint": True}, False, True),
    ],
)
def test_annotation_hints_follow_mcp_defaults(
    annotations: dict[str, Any] | None, read_only: bool | None, destructive: bool | None
) -> None:
    call = ToolCall("t", {}, annotations=annotations)
    for hint, value in (("readOnlyHint", read_only), ("destructiveHint", destructive)):
        assert matches({hint: True}, call) is (value is True)
        assert matches({hint: False}, call) is (value is False)


def test_annotation_hints_accept_the_mcp_model() -> None:
    from mcp.types import ToolAnnotations

    call = ToolCall("t", {}, annotations=ToolAnnotations(read_only_hint=True))  # type: ignore[arg-type]
    assert matches({"readOnlyHint": True}, call)
    assert matches({"destructiveHint": False}, call)


# --- targets ----------------------------------------------------------------------------


def test_targets_fallbacks_first_present_key_wins() -> None:
    policy = pol(
        """
        version: 1
        targets:
          - {server: github, repo: "{owner}/{repo}", branch: "{branch|base|ref}", path: "{path}"}
          - {tools: ["git_*"], repo: "{repo_path}", branch: "{branch_name|target}"}
          - {tools: ["git_*"], path: "{files.0}", branch: "{fallback}"}
          - {tools: ["literal"], repo: "{{not-a-placeholder}}", branch: "{none|also_none}"}
        """
    )

    def targets(call: ToolCall) -> tuple[str | None, str | None, str | None]:
        d = policy.decide(call)
        return d.target_repo, d.target_branch, d.target_path

    gh = ToolCall("push_files", {"owner": "acme", "repo": "api", "base": "main", "ref": "x"})
    assert targets(ToolCall(gh.tool, gh.arguments, server="github")) == ("acme/api", "main", None)
    # The server selector: without the server the github entry does not apply.
    assert targets(gh) == (None, None, None)
    # "{owner}/{repo}" with a missing part yields no target, never "/api".
    partial = ToolCall("x", {"repo": "api", "path": "README.md"}, server="github")
    assert targets(partial) == (None, None, "README.md")
    # Per field, later entries fill what earlier ones could not.
    git = ToolCall("git_diff", {"repo_path": "/r", "target": "dev", "files": ["a.py"]})
    assert targets(git) == ("/r", "dev", "a.py")
    assert targets(ToolCall("git_diff", {"repo_path": "/r", "fallback": "fb"})) == (
        "/r",
        "fb",
        None,
    )
    # Non-scalar values are skipped; numbers and booleans render as JSON text.
    assert targets(ToolCall("git_x", {"repo_path": ["/a"], "branch_name": 7})) == (None, "7", None)
    assert targets(ToolCall("literal", {})) == ("{not-a-placeholder}", None, None)


# --- combination ------------------------------------------------------------------------

_MATCHING_CALL = ToolCall(
    "tool_a",
    {"n": 5, "s": "main"},
    agent="bot-1",
    server="git",
    annotations={"readOnlyHint": False},
)
# For each condition kind: a `when` that matches _MATCHING_CALL, and one that does not.
_KINDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tool": ({"tool": "tool_*"}, {"tool": "other_*"}),
    "agent": ({"agent": "bot-*"}, {"agent": "human-*"}),
    "server": ({"server": "git"}, {"server": "github"}),
    "glob": ({"args": {"s": "ma*"}}, {"args": {"s": "dev"}}),
    "regex": ({"args": {"s": {"regex": "^m"}}}, {"args": {"s": {"regex": "^x"}}}),
    "in": ({"args": {"n": {"in": [5, 6]}}}, {"args": {"n": {"in": [7]}}}),
    "numeric": ({"args": {"n": {"gt": 1}}}, {"args": {"n": {"gt": 10}}}),
    "hint": ({"readOnlyHint": False}, {"readOnlyHint": True}),
}

_rule_spec = st.tuples(
    st.sampled_from(DECISIONS),
    st.sampled_from(sorted(_KINDS)),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(BLAST_RADII)),
)


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(_rule_spec, max_size=8), default=st.sampled_from(["ALLOW", "DENY"]))
def test_strictest_matching_rule_wins_file_order_breaks_ties(
    specs: list[tuple[str, str, bool, str | None]], default: str
) -> None:
    rules = []
    for i, (decision, kind, hit, radius) in enumerate(specs):
        rule: dict[str, Any] = {
            "id": f"r{i}",
            "when": _KINDS[kind][0 if hit else 1],
            "decision": decision,
            "reason": f"because {i}",
        }
        if decision == "REWRITE":
            rule["rewrite"] = {"set": {"marker": f"r{i}"}}
        if radius is not None:
            rule["blast_radius"] = radius
        rules.append(rule)
    policy = load_policy({"version": 1, "default": default, "rules": rules})
    d = policy.decide(_MATCHING_CALL)

    matched = [(f"r{i}", s) for i, s in enumerate(specs) if s[2]]
    assert d.policy_matched == tuple(rule_id for rule_id, _ in matched)
    if not matched:
        assert (d.decision, d.policy_rule, d.reason) == (default, "pass", d.reason)
        assert d.blast_radius == "Low"
        return
    strictest = max(STRICTNESS[s[0]] for _, s in matched)
    winner_id, winner = next((i, s) for i, s in matched if STRICTNESS[s[0]] == strictest)
    assert d.decision == winner[0]
    assert d.policy_rule == winner_id
    assert d.reason == f"because {winner_id[1:]}"
    radii = [BLAST_RADII.index(s[3]) for _, s in matched if s[3] is not None]
    assert d.blast_radius == BLAST_RADII[max(radii, default=0)]
    if d.decision == "REWRITE":
        # Every matched REWRITE rule applies, in file order: the last one's marker stays.
        last = [i for i, s in matched if s[0] == "REWRITE"][-1]
        assert d.arguments_rewritten is not None
        assert d.arguments_rewritten["marker"] == last
    else:
        assert d.arguments_rewritten is None


def test_blast_radius_is_the_highest_matching_class() -> None:
    policy = pol(
        """
        version: 1
        targets: [{tools: ["git_*"], branch: "{branch_name}"}]
        blast_radius:
          - {tools: ["git_*"], radius: Medium}
          - {tools: ["git_checkout"], branch: ["main"], radius: High}
          - {tools: ["git_reset"], radius: Critical}
          - {destructiveHint: true, radius: High}
        rules:
          - {id: raise, when: {tool: git_log}, decision: ALLOW, blast_radius: Critical}
        """
    )

    def radius(call: ToolCall) -> str:
        return policy.decide(call).blast_radius

    assert radius(ToolCall("fetch")) == "Low"
    assert radius(ToolCall("git_status")) == "Medium"
    assert radius(ToolCall("git_checkout", {"branch_name": "dev"})) == "Medium"
    assert radius(ToolCall("git_checkout", {"branch_name": "main"})) == "High"
    assert radius(ToolCall("git_reset")) == "Critical"
    assert radius(ToolCall("other", annotations={"destructiveHint": True})) == "High"
    assert radius(ToolCall("git_log")) == "Critical"  # a matched rule may set it


def test_approval_settings_come_from_the_winning_rule_over_policy_defaults() -> None:
    policy = pol(
        """
        version: 1
        default: REQUIRE_APPROVAL
        approval: {timeout: 1h, on_timeout: ALLOW, approvers: [ops]}
        rules:
          - {id: a, when: {tool: merge}, decision: REQUIRE_APPROVAL, approval: {timeout: 90s}}
          - {id: b, when: {tool: merge}, decision: REQUIRE_APPROVAL,
             approval: {timeout: 1h30m, on_timeout: DENY, approvers: [alice, bob]}}
          - {id: c, when: {tool: push}, decision: ALLOW}
        """
    )
    d = policy.decide(ToolCall("merge"))
    assert (d.policy_rule, d.policy_matched) == ("a", ("a", "b"))
    assert d.approval is not None
    assert (d.approval.timeout_s, d.approval.on_timeout, d.approval.approvers) == (
        90.0,
        "ALLOW",
        ("ops",),
    )
    unmatched = policy.decide(ToolCall("fetch"))
    assert (unmatched.decision, unmatched.policy_rule) == ("REQUIRE_APPROVAL", "pass")
    assert unmatched.approval is not None and unmatched.approval.timeout_s == 3600.0
    assert policy.decide(ToolCall("push")).approval is None  # only for REQUIRE_APPROVAL


# --- presets ----------------------------------------------------------------------------


def test_preset_deny_all_denies_unless_a_rule_allows() -> None:
    policy = pol(
        """
        version: 1
        preset: deny-all
        rules:
          - {id: status-ok, when: {tool: git_status}, decision: ALLOW}
        """
    )
    denied = policy.decide(ToolCall("git_commit"))
    assert (denied.decision, denied.policy_rule, denied.policy_matched) == (
        "DENY",
        "preset:deny-all",
        (),
    )
    assert denied.reason and "deny-all" in denied.reason
    allowed = policy.decide(ToolCall("git_status"))
    assert (allowed.decision, allowed.policy_rule) == ("ALLOW", "status-ok")


def test_preset_approve_all_allows_unless_a_rule_says_otherwise() -> None:
    policy = pol(
        """
        version: 1
        preset: approve-all
        rules: [{id: no-reset, when: {tool: git_reset}, decision: DENY}]
        """
    )
    assert policy.decide(ToolCall("anything")).policy_rule == "preset:approve-all"
    assert policy.decide(ToolCall("anything")).decision == "ALLOW"
    assert policy.decide(ToolCall("git_reset")).decision == "DENY"


def test_preset_approve_reads() -> None:
    policy = pol(
        """
        version: 1
        preset: approve-reads
        reads: ["get_*", "git_log"]
        approval: {timeout: 5m, approvers: [ops]}
        rules:
          - {id: no-secret-reads, when: {tool: get_secret}, decision: DENY}
          - {id: add-ok, when: {tool: git_add}, decision: ALLOW}
        """
    )

    def verdict(call: ToolCall) -> tuple[str, str]:
        d = policy.decide(call)
        return d.decision, d.policy_rule

    assert verdict(ToolCall("get_file")) == ("ALLOW", "preset:approve-reads")
    assert verdict(ToolCall("git_log")) == ("ALLOW", "preset:approve-reads")
    read_only = ToolCall("git_status", annotations={"readOnlyHint": True})
    assert verdict(read_only) == ("ALLOW", "preset:approve-reads")
    assert verdict(ToolCall("git_status")) == ("REQUIRE_APPROVAL", "preset:approve-reads")
    writer = ToolCall("git_commit", annotations={"readOnlyHint": False})
    held = policy.decide(writer)
    assert (held.decision, held.policy_rule) == ("REQUIRE_APPROVAL", "preset:approve-reads")
    assert held.approval is not None and (held.approval.timeout_s, held.approval.approvers) == (
        300.0,
        ("ops",),
    )
    assert verdict(ToolCall("get_secret")) == ("DENY", "no-secret-reads")  # rules on top
    assert verdict(ToolCall("git_add")) == ("ALLOW", "add-ok")


# --- rewrites ---------------------------------------------------------------------------


def test_rewrite_templates_set_remove_and_keep_the_original() -> None:
    policy = pol(
        """
        version: 1
        rules:
          - id: rw
            when: {tool: git_checkout}
            decision: REWRITE
            rewrite:
              remove: [force, opts.dry_run]
              set:
                branch_name: "agent/{session_id}"
                note: "{agent} via {tool} on {server}: {args.branch_name} {{literal}}"
                count_copy: "{args.count}"
                meta.origin: "{args.missing|agent}"
                fixed: [1, 2]
        """
    )
    original = {"branch_name": "main", "force": True, "count": 3, "opts": {"dry_run": 1, "x": 2}}
    call = ToolCall("git_checkout", original, agent="bot", session_id="s-9", server="git")
    d = policy.decide(call)
    assert d.decision == "REWRITE"
    assert d.arguments == original  # the original, untouched
    assert original["force"] is True
    assert d.arguments_rewritten == {
        "branch_name": "agent/s-9",
        "count": 3,
        "opts": {"x": 2},
        "note": "bot via git_checkout on git: main {literal}",
        "count_copy": 3,  # a lone {args.x} keeps the JSON type
        "meta": {"origin": "bot"},
        "fixed": [1, 2],
    }


def test_rewrite_that_cannot_be_produced_fails_closed() -> None:
    policy = pol(
        """
        version: 1
        rules:
          - {id: rw, when: {tool: t}, decision: REWRITE,
             rewrite: {set: {branch_name: "agent/{session_id}"}}}
          - {id: nested, when: {tool: n}, decision: REWRITE, rewrite: {set: {a.b: 1}}}
        """
    )
    d = policy.decide(ToolCall("t", {"branch_name": "main"}))
    assert (d.decision, d.policy_rule, d.arguments_rewritten) == ("DENY", "rw", None)
    assert d.reason is not None and "{session_id} has no value" in d.reason
    blocked = policy.decide(ToolCall("n", {"a": "not an object"}))
    assert blocked.decision == "DENY" and "a is not an object" in (blocked.reason or "")


def test_rewrite_is_not_applied_when_a_stricter_rule_wins() -> None:
    policy = pol(
        """
        version: 1
        rules:
          - {id: rw, when: {tool: t}, decision: REWRITE, rewrite: {set: {x: 1}}}
          - {id: hold, when: {tool: t}, decision: REQUIRE_APPROVAL}
        """
    )
    d = policy.decide(ToolCall("t", {"x": 0}))
    assert (d.decision, d.policy_rule, d.policy_matched) == (
        "REQUIRE_APPROVAL",
        "hold",
        ("rw", "hold"),
    )
    assert d.arguments_rewritten is None


# --- redaction --------------------------------------------------------------------------

_REDACTING_POLICY = """
version: 1
targets:
  - {tools: ["*"], repo: "{token}", branch: "{nested.password}", path: "{headers.0.value}"}
rules:
  - id: scrub
    when: {tool: "*"}
    decision: REWRITE
    reason: secrets are scrubbed
    rewrite:
      redact: [token, nested.password, headers.value, {regex: "sk_[A-Za-z0-9]+"}]
      set:
        copy: "{args.token}"
        note: "copied {args.nested.password} and {args.message}"
  - id: deny-push
    when: {tool: push}
    decision: DENY
    reason: no pushes
"""

_secret = st.text(string.ascii_letters + string.digits, min_size=12, max_size=40).map(
    lambda s: "sk_" + s
)
_plain_text = st.text(string.ascii_lowercase + " ", max_size=20)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=_secret, filler=_plain_text, tool=st.sampled_from(["commit", "push"]))
def test_redaction_never_leaves_the_secret_anywhere_in_the_decision(
    secret: str, filler: str, tool: str
) -> None:
    assume(secret not in filler)
    policy = loads_policy(_REDACTING_POLICY)
    args = {
        "token": secret,
        "nested": {"password": secret, "user": filler},
        "headers": [{"name": "auth", "value": secret}],
        "message": f"{filler} {secret} {filler}",
        "other": filler,
    }
    d = policy.decide(ToolCall(tool, args, agent="bot", session_id="s"))
    assert d.decision == ("DENY" if tool == "push" else "REWRITE")
    assert d.redactions == 4
    everything = repr(d) + json.dumps(d.to_json_dict()) + str(d.target_path)
    assert secret not in everything
    assert d.arguments["token"] == REDACTED
    assert d.arguments["message"] == f"{filler} {REDACTED} {filler}"
    assert (d.target_repo, d.target_branch, d.target_path) == (REDACTED, REDACTED, REDACTED)
    if tool == "commit":
        assert d.arguments_rewritten is not None
        assert d.arguments_rewritten["copy"] == REDACTED
        assert d.arguments_rewritten["other"] == filler  # only secrets are touched
    # The landed row never holds it either.
    row = empty_row()
    row.update(span_type="tool", tool_name=tool, arguments=json.dumps(args), session_id="s")
    apply_to_row(policy, row)
    assert secret not in json.dumps(row, default=str)
    assert row["redactions"] == 4


def test_redaction_of_a_rule_that_does_not_match_changes_nothing() -> None:
    policy = loads_policy(_REDACTING_POLICY.replace('tool: "*"}', "tool: other}", 1))
    args = {"token": "sk_abcdefghijklmnop"}
    d = policy.decide(ToolCall("commit", args))
    assert d.arguments is args and d.redactions == 0


def test_redaction_leaves_a_null_alone_and_does_not_count_it() -> None:
    # A null holds no secret; replacing it would run the tool with a made-up value.
    policy = rule_policy(
        {"tool": "deploy", "args": {"token": {"exists": True}}},
        "REWRITE",
        rewrite={"redact": ["token", "items.key"]},
    )
    args = {"token": None, "count": 5, "items": [{"key": None}, {"key": "k-123"}]}
    d = policy.decide(ToolCall("deploy", args, session_id="s"))
    assert d.decision == "REWRITE" and d.redactions == 1
    expected = {"token": None, "count": 5, "items": [{"key": None}, {"key": REDACTED}]}
    assert d.arguments == expected and d.arguments_rewritten == expected
    row = empty_row()
    row.update(span_type="tool", tool_name="deploy", arguments=json.dumps(args), session_id="s")
    apply_to_row(policy, row)
    assert json.loads(row["arguments"]) == expected and row["redactions"] == 1


@pytest.mark.parametrize("marker", [REDACTED, "[REDACTED:key]", "[REDACTED:github_token]"])
def test_a_value_already_redacted_is_not_redacted_or_counted_again(marker: str) -> None:
    # After the fact, the exporter decides on arguments the credential scrub has already
    # redacted (`[REDACTED:key]`): the row must not count that value a second time.
    policy = rule_policy({"tool": "deploy"}, "REWRITE", rewrite={"redact": ["token"]})
    d = policy.decide(ToolCall("deploy", {"token": marker, "n": 1}, session_id="s"))
    assert d.redactions == 0 and d.arguments_rewritten == {"token": marker, "n": 1}
    assert d.redact_text(f"result quotes {marker}") == (f"result quotes {marker}", 0)
    row = empty_row()
    row.update(
        span_type="tool",
        tool_name="deploy",
        arguments=json.dumps({"token": marker}),
        result_preview=f"ok {marker}",
        redactions=1,
        session_id="s",
    )
    apply_to_row(policy, row)
    assert json.loads(row["arguments"]) == {"token": marker} and row["redactions"] == 1
    assert row["result_preview"] == f"ok {marker}"


# --- fail closed, totality --------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    tool=st.one_of(st.text(max_size=12), st.none(), st.integers()),
    args=st.one_of(st.dictionaries(st.text(max_size=8), _json, max_size=5), _json),
    annotations=st.one_of(st.none(), st.dictionaries(st.text(max_size=12), _json, max_size=3)),
)
def test_decide_is_total(tool: Any, args: Any, annotations: Any) -> None:
    policy = load_policy("examples/policy-github.yaml")
    d = policy.decide(ToolCall(tool, args, agent="a", session_id="s", annotations=annotations))
    assert isinstance(d, Decision)
    assert d.decision in DECISIONS
    assert d.blast_radius in BLAST_RADII
    assert d.policy_version == policy.version
    if not isinstance(tool, str) or not (args is None or isinstance(args, dict)):
        assert (d.decision, d.policy_rule) == ("DENY", "policy-error")


def test_policy_error_decision_is_a_low_radius_deny() -> None:
    d = policy_error_decision(ToolCall("git_reset", {"a": 1}), "policy failed to load")
    assert (d.decision, d.policy_rule, d.blast_radius, d.policy_matched) == (
        "DENY",
        "policy-error",
        "Low",
        (),
    )
    assert d.reason == "policy failed to load" and d.arguments == {"a": 1}
    assert d.to_json_dict()["decision"] == "DENY"


def test_to_json_dict_is_exactly_the_spec_explain_object() -> None:
    d = load_policy("examples/policy-git.yaml").decide(
        ToolCall("git_checkout", {"repo_path": "/r", "branch_name": "main"}, session_id="s")
    )
    assert d.to_json_dict() == {
        "decision": "REWRITE",
        "policy_rule": "checkout-default-branch",
        "policy_matched": ["checkout-default-branch"],
        "blast_radius": "High",
        "target_repo": "/r",
        "target_branch": "main",
        "arguments": {"repo_path": "/r", "branch_name": "main"},
        "arguments_rewritten": {"repo_path": "/r", "branch_name": "agent/s"},
        "reason": "Agents work on their own branch",
    }


# --- version ----------------------------------------------------------------------------


def test_version_hashes_the_normalized_policy() -> None:
    base = pol(
        """
        version: 1
        rules:
          - id: a
            when: {tool: [x, y], args: {b: main}}
            decision: DENY
            tests: [{call: {tool: x}, expect: ALLOW}]
        """
    )
    # Same meaning, different spelling: comments, order, synonyms, flow style, no tests.
    same = pol(
        """
        # a comment
        rules:
          - decision: DENY
            when:
              args: {b: [main]}
              tools: [y, x]
            id: a
        default: ALLOW
        version: 1
        """
    )
    changed = pol(
        """
        version: 1
        rules: [{id: a, when: {tool: [x, y], args: {b: main}}, decision: REQUIRE_APPROVAL}]
        """
    )
    assert base.version == same.version
    assert base.version != changed.version
    assert len(base.version) == 16 and int(base.version, 16) >= 0
    assert base.decide(ToolCall("x")).policy_version == base.version


# --- the fast paths agree with the reference semantics -----------------------------------

_keys = st.sampled_from(["a", "b", "c", "d"])
_template = st.one_of(
    st.lists(_keys, min_size=1, max_size=3, unique=True).map(lambda ks: "{" + "|".join(ks) + "}"),
    st.tuples(_keys, _keys).map(lambda ks: f"{{{ks[0]}}}/{{{ks[1]}}}"),
)
_scalar = st.one_of(st.none(), st.text("xyz", max_size=2), st.integers(0, 9), st.booleans())


def _reference_render(template: str, args: dict[str, Any]) -> str | None:
    """SPEC: placeholders take the first present key; a missing placeholder voids it."""
    out = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        out += literal
        if field is None:
            continue
        for key in field.split("|"):
            value = args.get(key)
            if isinstance(value, bool):
                out += "true" if value else "false"
                break
            if isinstance(value, str | int):
                out += str(value)
                break
        else:
            return None
    return out


@settings(max_examples=150, deadline=None)
@example(entries=[{"repo": "{a}"}, {"repo": "{b|c}"}], args={"a": "x", "b": "y"})
@example(entries=[{"repo": "{a}/{b}"}, {"repo": "{c}"}], args={"a": "x", "c": "z"})
@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "repo": _template,
                "branch": _template,
                "path": _template,
                "tools": st.sampled_from(["t", "x", "*"]),
            },
        ).filter(lambda e: any(k in e for k in ("repo", "branch", "path"))),
        min_size=1,
        max_size=4,
    ),
    args=st.dictionaries(_keys, _scalar),
)
def test_targets_first_resolving_entry_wins_per_field(
    entries: list[dict[str, str]], args: dict[str, Any]
) -> None:
    policy = load_policy({"version": 1, "targets": entries})
    d = policy.decide(ToolCall("t", args))
    for field, got in (
        ("repo", d.target_repo),
        ("branch", d.target_branch),
        ("path", d.target_path),
    ):
        expected = None
        for entry in entries:
            if entry.get("tools", "t") in ("t", "*") and field in entry:
                expected = _reference_render(entry[field], args)
                if expected is not None:
                    break
        assert got == expected, (field, entries, args)


@settings(max_examples=100, deadline=None)
@given(
    tool=st.sampled_from(["git_add", "git_commit", "git_log", "push_files", "get_me", "other"]),
    args=st.dictionaries(
        st.sampled_from(["repo_path", "files", "max_count", "branch_name", "message", "branch"]),
        st.one_of(_scalar, st.lists(st.text("ab.env/", max_size=6), max_size=3)),
    ),
    read_only=st.one_of(st.none(), st.booleans()),
)
def test_explain_agrees_with_decide(
    tool: str, args: dict[str, Any], read_only: bool | None
) -> None:
    annotations = None if read_only is None else {"readOnlyHint": read_only}
    call = ToolCall(tool, args, agent="a", session_id="s", annotations=annotations)
    for policy in (GIT_EXAMPLE, GITHUB_EXAMPLE):
        explanation = policy.explain(call)
        assert explanation.decision == policy.decide(call)
        traced = tuple(t.rule_id for t in explanation.rules if t.matched)
        assert traced == explanation.decision.policy_matched
        assert all(t.failed is not None for t in explanation.rules if not t.matched)


GIT_EXAMPLE = load_policy("examples/policy-git.yaml")
GITHUB_EXAMPLE = load_policy("examples/policy-github.yaml")


# --- dotted paths: a literal dotted key cannot shadow the nested value (or vice versa) ----

# One predicate per kind of check on `opts.v`; each matches the value MATCH and not JUNK.
_DOTTED_MATCHERS: list[tuple[Any, Any, Any]] = [
    (True, True, False),  # bare non-string: JSON equality
    ("main", "main", "dev"),  # exact string
    ("release/*", "release/1", "dev"),  # glob
    ({"glob": ["*.pem", "*.key"]}, "id.pem", "id.pub"),
    ({"regex": "^--force"}, "--force-with-lease", "--dry-run"),
    ({"in": ["squash", "rebase"]}, "rebase", "merge"),
    ({"equals": {"draft": True}}, {"draft": True}, {"draft": False}),
    ({"gt": 100}, 150, 5),
    ({"lte": 10}, "7", 50),
    ({"gt": 1, "lte": 10}, 5, 50),  # several operators on one reading
    ("*.env", ["a.py", "prod.env"], ["a.py"]),  # a list value: any element
    ({"exists": True}, None, None),  # present (even null) in either reading
]


@pytest.mark.parametrize(("matcher", "match", "junk"), _DOTTED_MATCHERS)
def test_a_dotted_path_matches_when_either_the_literal_key_or_the_nested_value_does(
    matcher: Any, match: Any, junk: Any
) -> None:
    policy = rule_policy({"tool": "push", "args": {"opts.v": matcher}})

    def matched(args: dict[str, Any]) -> bool:
        return policy.decide(ToolCall("push", args)).policy_matched == ("r",)

    assert matched({"opts": {"v": match}})
    assert matched({"opts.v": match})
    # The junk reading must hide nothing, whichever side it is on.
    assert matched({"opts": {"v": match}, "opts.v": junk})
    assert matched({"opts": {"v": junk}, "opts.v": match})
    if matcher != {"exists": True}:
        assert not matched({"opts": {"v": junk}, "opts.v": junk})
    assert not matched({"other": match})


def test_a_dotted_path_is_absent_only_when_both_readings_are_absent() -> None:
    """`exists: false` is a negative condition: hiding one reading must not satisfy it."""
    policy = rule_policy({"tool": "push", "args": {"opts.v": {"exists": False}}})

    def matched(args: dict[str, Any]) -> bool:
        return policy.decide(ToolCall("push", args)).policy_matched == ("r",)

    assert matched({})
    assert matched({"opts": {"w": 1}})
    assert not matched({"opts": {"v": None}})
    assert not matched({"opts.v": 1})
    assert not matched({"opts": {}, "opts.v": 1})
    assert not matched({"opts": {"v": 1}, "opts.x": 1})


def test_a_junk_literal_dotted_key_does_not_shadow_a_deny() -> None:
    """The security review's reproducer: the server reads opts.force (nested)."""
    policy = pol(
        """
        version: 1
        rules:
          - id: noforce
            when: {tool: push, args: {opts.force: true}}
            decision: DENY
        """
    )
    args = {"branch": "dev", "opts": {"force": True}, "opts.force": False}
    decision = policy.decide(ToolCall("push", args))
    assert (decision.decision, decision.policy_rule) == ("DENY", "noforce")
    assert policy.explain(ToolCall("push", args)).rules[0].matched
    ok = policy.decide(ToolCall("push", {"branch": "dev", "opts": {"force": False}}))
    assert ok.decision == "ALLOW"


def test_redact_and_remove_on_a_dotted_path_reach_both_readings() -> None:
    policy = rule_policy(
        {"tool": "call"},
        "REWRITE",
        rewrite={"remove": ["opts.force"], "redact": ["auth.token"]},
    )
    args = {
        "auth": {"token": "nested-secret"},
        "auth.token": "literal-secret",
        "opts": {"force": True, "keep": 1},
        "opts.force": False,
    }
    d = policy.decide(ToolCall("call", args))
    assert d.decision == "REWRITE" and d.redactions == 2
    assert d.arguments == {
        "auth": {"token": REDACTED},
        "auth.token": REDACTED,
        "opts": {"force": True, "keep": 1},
        "opts.force": False,
    }
    assert d.arguments_rewritten == {
        "auth": {"token": REDACTED},
        "auth.token": REDACTED,
        "opts": {"keep": 1},
    }
    assert "secret" not in json.dumps(d.to_json_dict())


def test_targets_and_set_on_dotted_paths_keep_working() -> None:
    policy = pol(
        """
        version: 1
        targets:
          - {tools: [push], branch: "{opts.branch}", repo: "{dotted.repo}"}
        rules:
          - id: own-branch
            when: {tool: push, branch: main}
            decision: REWRITE
            rewrite: {set: {opts.branch: "agent/{session_id}", opts.note: "{args.opts.branch}"}}
        """
    )
    d = policy.decide(
        ToolCall("push", {"opts": {"branch": "main"}, "dotted.repo": "/src/app"}, session_id="s1")
    )
    assert (d.decision, d.target_branch, d.target_repo) == ("REWRITE", "main", "/src/app")
    assert d.arguments_rewritten == {
        "opts": {"branch": "agent/s1", "note": "main"},
        "dotted.repo": "/src/app",
    }


# --- free-text redaction (Decision.redact_text / TextRedaction) ---------------------------


def test_redact_text_erases_key_values_and_regex_matches_from_free_text() -> None:
    policy = rule_policy(
        {"tool": "login"},
        "REWRITE",
        rewrite={"redact": ["pin", "creds", {"regex": "SEKRIT[0-9]+"}]},
    )
    args = {"user": "bob", "pin": 9876, "creds": {"k": 'a"b', "n": [4242]}, "p": "/SEKRIT42/x"}
    d = policy.decide(ToolCall("login", args))
    text, n = d.redact_text('pin 9876, k={"k":"a\\"b"} a"b 4242 at /SEKRIT42/x and SEKRIT7')
    assert text == (
        f'pin {REDACTED}, k={{"k":"{REDACTED}"}} {REDACTED} {REDACTED} at /{REDACTED}/x'
        f" and {REDACTED}"
    )
    assert n == 6
    assert d.redact_text("nothing here") == ("nothing here", 0)
    # The scrubber itself never shows the secrets it holds.
    assert "9876" not in repr(d) and "9876" not in repr(d.text_redaction)


def test_redact_text_catches_a_secret_cut_by_truncation() -> None:
    policy = rule_policy({"tool": "t"}, "REWRITE", rewrite={"redact": ["token"]})
    d = policy.decide(ToolCall("t", {"token": "abcdef123456"}))
    assert d.redact_text("token is abcdef12…") == (f"token is {REDACTED}…", 1)
    assert d.redact_text("token is abcdef12…[truncated]")[0] == f"token is {REDACTED}…[truncated]"
    assert d.redact_text("token is abcdef12") == ("token is abcdef12", 0)  # not cut: no guess


def test_redact_text_applies_whatever_wins_and_only_when_a_redacting_rule_matched() -> None:
    policy = pol(
        """
        version: 1
        rules:
          - id: scrub
            when: {tool: login}
            decision: REWRITE
            rewrite: {redact: [pin]}
          - id: hold
            when: {tool: login}
            decision: REQUIRE_APPROVAL
        """
    )
    d = policy.decide(ToolCall("login", {"pin": "1234"}))
    assert d.decision == "REQUIRE_APPROVAL" and d.arguments_rewritten is None
    assert d.redact_text("bad pin 1234") == (f"bad pin {REDACTED}", 1)
    other = policy.decide(ToolCall("logout", {"pin": "1234"}))
    assert other.text_redaction is None and other.redact_text("1234") == ("1234", 0)
    # The scrubber does not take part in equality: decisions stay comparable values.
    assert d == policy.decide(ToolCall("login", {"pin": "1234"}))


def test_a_junk_dotted_key_cannot_move_a_target_it_fails_closed() -> None:
    # A target holds one value: with the literal key and the nested path both present and
    # different, either reading could be the junk one, so the call is refused.
    policy = loads_policy(
        """
        version: 1
        targets: [{tools: [push], branch: "{opts.branch}"}]
        rules:
          - {id: no-main, when: {tool: push, branch: main}, decision: DENY}
        """
    )

    def decide(args: dict[str, Any]) -> Any:
        return policy.decide(ToolCall(tool="push", arguments=args))

    assert decide({"opts": {"branch": "main"}}).policy_rule == "no-main"
    ambiguous = decide({"opts": {"branch": "main"}, "opts.branch": "dev"})
    assert (ambiguous.decision, ambiguous.policy_rule) == ("DENY", "policy-error")
    assert "'opts.branch' is both a key and a nested path" in (ambiguous.reason or "")
    same = decide({"opts": {"branch": "dev"}, "opts.branch": "dev"})  # agree: no ambiguity
    assert (same.decision, same.target_branch) == ("ALLOW", "dev")


def test_a_value_cut_to_fit_the_record_is_erased_by_its_prefix() -> None:
    # Arguments over 64 KiB are recorded with long strings cut; the policy's redaction is
    # then built from the cut value, and the result quotes the secret whole.
    from tooltrail.policy import TextRedaction
    from tooltrail.semconv import TRUNCATION_MARK

    secret = "sk-" + "a1b2c3d4" * 12
    erase = TextRedaction.of([secret[:40] + TRUNCATION_MARK], [])
    assert erase is not None
    text, n = erase.scrub(f'used {secret}, then {{"k": "{secret}"}}')
    assert secret[:40] not in text and n == 2
    assert text == 'used [REDACTED], then {"k": "[REDACTED]"}'
    short = TextRedaction.of(["short" + TRUNCATION_MARK], [])
    assert short is not None and short.regexes == ()  # too little to look for by prefix


def test_a_cut_preview_is_not_redacted_for_one_shared_first_character() -> None:
    from tooltrail.policy import TextRedaction

    erase = TextRedaction.of(["s3cr3t-value"], [])
    assert erase is not None
    assert erase.scrub("results: 3 files, last one is s…") == (
        "results: 3 files, last one is s…",
        0,
    )
    assert erase.scrub("token was s3cr…") == ("token was [REDACTED]…", 1)
