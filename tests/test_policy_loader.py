"""Loading policies: every bad input is a PolicyError naming the file, the YAML line and
the rule id; the JSON Schema ships in the package and rejects unknown keys everywhere."""

from __future__ import annotations

import json
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tooltrail.errors import PolicyError
from tooltrail.policy import ToolCall, load_policy
from tooltrail.policy.loader import PolicyValidationError, schema

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return str(info.value)


# Each case: policy text (line 1 = `version: 1` unless the case is about it), the line and
# rule id the message must name, and words it must contain.
BAD_INPUT: list[tuple[str, str, int, str | None, tuple[str, ...]]] = [
    (
        "malformed-yaml",
        """
        version: 1
        rules:
          - id: a
            when: {tool: x
            decision: DENY
        """,
        5,
        None,
        ("malformed YAML",),
    ),
    (
        "unknown-rule-key",
        """
        version: 1
        rules:
          - id: no-reset
            whn: {tool: git_reset}
            decision: DENY
        """,
        4,
        "no-reset",
        ("unknown key 'whn'", "did you mean 'when'"),
    ),
    (
        "unknown-condition-key",
        """
        version: 1
        rules:
          - id: r1
            when:
              tool: x
              branches: [main]
            decision: DENY
        """,
        6,
        "r1",
        ("unknown key 'branches'", "did you mean 'branch'"),
    ),
    (
        "unknown-top-level-key",
        """
        version: 1
        rulez: []
        """,
        2,
        None,
        ("unknown key 'rulez'", "did you mean 'rules'"),
    ),
    (
        "unknown-decision",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x}
            decision: BLOCK
        """,
        5,
        "r1",
        ("'BLOCK' is not one of ALLOW, DENY, REWRITE, REQUIRE_APPROVAL",),
    ),
    (
        "lowercase-decision",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x}
            decision: deny
        """,
        5,
        "r1",
        ("did you mean 'DENY'",),
    ),
    (
        "bad-regex",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x}
            decision: DENY
          - id: msg-regex
            when:
              tool: git_commit
              args: {message: {regex: "(unclosed"}}
            decision: DENY
        """,
        9,
        "msg-regex",
        ("bad regex '(unclosed'",),
    ),
    (
        "bad-redact-regex",
        """
        version: 1
        rules:
          - id: scrub
            when: {tool: x}
            decision: REWRITE
            rewrite:
              redact:
                - token
                - {regex: "[a-"}
        """,
        9,
        "scrub",
        ("bad regex '[a-'",),
    ),
    (
        "duplicate-rule-ids",
        """
        version: 1
        rules:
          - id: same
            when: {tool: x}
            decision: DENY
          - id: same
            when: {tool: y}
            decision: ALLOW
        """,
        6,
        "same",
        ("duplicate rule id 'same'", "first defined at line 3"),
    ),
    (
        "rewrite-without-rewrite",
        """
        version: 1
        rules:
          - id: rw
            when: {tool: git_checkout}
            decision: REWRITE
        """,
        3,
        "rw",
        ("REWRITE needs a `rewrite:`",),
    ),
    (
        "approval-bad-timeout",
        """
        version: 1
        rules:
          - id: hold
            when: {tool: merge}
            decision: REQUIRE_APPROVAL
            approval:
              timeout: 10 minutes
        """,
        7,
        "hold",
        ("bad approval timeout", "'10 minutes' is not a duration"),
    ),
    (
        "approval-zero-timeout",
        """
        version: 1
        rules:
          - id: hold
            when: {tool: merge}
            decision: REQUIRE_APPROVAL
            approval: {timeout: 0s}
        """,
        6,
        "hold",
        ("not a positive duration",),
    ),
    (
        "approval-too-long",
        """
        version: 1
        rules:
          - id: hold
            when: {tool: merge}
            decision: REQUIRE_APPROVAL
            approval: {timeout: 30d}
        """,
        6,
        "hold",
        ("longer than the maximum 7d",),
    ),
    (
        "approval-bad-on-timeout",
        """
        version: 1
        rules:
          - id: hold
            when: {tool: merge}
            decision: REQUIRE_APPROVAL
            approval: {on_timeout: MAYBE}
        """,
        6,
        "hold",
        ("'MAYBE' is not one of DENY, ALLOW",),
    ),
    (
        "args-not-an-object",
        """
        version: 1
        rules:
          - id: listy
            when:
              tool: x
              args: [branch_name, main]
            decision: DENY
        """,
        6,
        "listy",
        ("must be an object, got a list",),
    ),
    (
        "unknown-arg-operator",
        """
        version: 1
        rules:
          - id: op
            when:
              tool: x
              args:
                count: {gtt: 5}
            decision: DENY
        """,
        7,
        "op",
        ("unknown key 'gtt'", "did you mean 'gt'"),
    ),
    (
        "duplicate-yaml-key",
        """
        version: 1
        rules:
          - id: twice
            when: {tool: x}
            decision: DENY
            decision: ALLOW
        """,
        6,
        "twice",
        ("duplicate key 'decision'", "first at line 5"),
    ),
    (
        "rewrite-on-deny",
        """
        version: 1
        rules:
          - id: confused
            when: {tool: x}
            decision: DENY
            rewrite: {set: {a: 1}}
        """,
        6,
        "confused",
        ("`rewrite:` only applies to REWRITE, not to DENY",),
    ),
    (
        "approval-on-allow",
        """
        version: 1
        rules:
          - id: confused
            when: {tool: x}
            decision: ALLOW
            approval: {timeout: 1m}
        """,
        6,
        "confused",
        ("`approval:` only applies to REQUIRE_APPROVAL",),
    ),
    (
        "unknown-template-placeholder",
        """
        version: 1
        rules:
          - id: rw
            when: {tool: x}
            decision: REWRITE
            rewrite:
              set:
                branch_name: "agent/{sesion_id}"
        """,
        8,
        "rw",
        ("unknown placeholder {sesion_id}", "did you mean {session_id}"),
    ),
    (
        "unbalanced-target-template",
        """
        version: 1
        targets:
          - tools: [x]
            repo: "{owner/{repo}"
        """,
        4,
        None,
        ("targets[0].repo", "unbalanced"),
    ),
    (
        "preset-and-default",
        """
        version: 1
        preset: deny-all
        default: ALLOW
        """,
        3,
        None,
        ("preset 'deny-all' already sets the default",),
    ),
    (
        "unknown-preset",
        """
        version: 1
        preset: approve-writes
        """,
        2,
        None,
        ("is not one of deny-all, approve-reads, approve-all",),
    ),
    (
        "wrong-version",
        """
        version: 2
        """,
        1,
        None,
        ("version", "must be 1"),
    ),
    (
        "missing-when",
        """
        version: 1
        rules:
          - id: lazy
            decision: DENY
        """,
        3,
        "lazy",
        ("missing required key 'when'",),
    ),
    (
        "bad-rule-id",
        """
        version: 1
        rules:
          - id: "has space"
            when: {tool: x}
            decision: DENY
        """,
        3,
        None,
        ("'has space' is not a valid rule id",),
    ),
    (
        "rule-id-pass",
        """
        version: 1
        rules:
          - id: pass
            when: {tool: git_log}
            decision: DENY
        """,
        3,
        "pass",
        ("(rules[0].id)", "rule id 'pass' is reserved", "no rule matches"),
    ),
    (
        "rule-id-policy-error",
        """
        version: 1
        rules:
          - id: ok
            when: {tool: x}
            decision: ALLOW
          - id: policy-error
            when: {tool: y}
            decision: DENY
        """,
        6,
        "policy-error",
        ("(rules[1].id)", "rule id 'policy-error' is reserved"),
    ),
    (
        "rule-id-session-canceled",
        """
        version: 1
        rules:
          - id: session-canceled
            when: {tool: x}
            decision: DENY
        """,
        3,
        "session-canceled",
        ("(rules[0].id)", "rule id 'session-canceled' is reserved", "session was canceled"),
    ),
    (
        "rule-id-preset",
        """
        version: 1
        rules:
          - id: "preset:deny-all"
            when: {tool: x}
            decision: DENY
        """,
        3,
        "preset:deny-all",
        ("(rules[0].id)", "is not a valid rule id"),
    ),
    (
        "test-annotation-hint-not-boolean",
        """
        version: 1
        rules:
          - id: reads
            when: {readOnlyHint: true}
            decision: ALLOW
            tests:
              - call: {tool: x, annotations: {title: T, readOnlyHint: "yes"}}
                expect: ALLOW
        """,
        7,
        "reads",
        ("call.annotations.readOnlyHint", "must be a boolean or null, got a string"),
    ),
    (
        "test-expects-unknown-verdict",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x}
            decision: DENY
            tests:
              - call: {tool: x}
                expect: {decision: DENY, rule: r2}
        """,
        8,
        "r1",
        ("test expects verdict 'r2'",),
    ),
    (
        "infinity-names-its-place",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x, args: {n: .inf}}
            decision: DENY
        """,
        4,
        "r1",
        ("(rules[0].when.args.n)", "infinity is not a JSON number"),
    ),
    (
        "nan-names-its-place",
        """
        version: 1
        rules:
          - id: r1
            decision: DENY
            when:
              tool: x
              args: {n: {gt: .nan}}
        """,
        7,
        "r1",
        ("(rules[0].when.args.n.gt)", "NaN is not a JSON number"),
    ),
    (
        "arg-path-with-an-empty-segment",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x, args: {files.: "*.pem"}}
            decision: DENY
        """,
        4,
        "r1",
        ('(rules[0].when.args["files."])', "'files.' is not an argument path"),
    ),
    (
        "redact-path-with-an-empty-segment",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x}
            decision: REWRITE
            rewrite: {redact: [a..b]}
        """,
        6,
        "r1",
        ("(rules[0].rewrite.redact[0])", "'a..b' is not an argument path"),
    ),
    (
        "test-expects-a-preset-the-policy-does-not-use",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x}
            decision: DENY
            tests:
              - call: {tool: y}
                expect: {rule: "preset:deny-all"}
        """,
        8,
        "r1",
        ("verdict 'preset:deny-all'", "the verdict is 'pass'"),
    ),
    (
        "test-expects-pass-under-a-preset",
        """
        version: 1
        preset: deny-all
        tests:
          - call: {tool: y}
            expect: {rule: pass}
        """,
        5,
        None,
        ("tests[0].expect.rule: ", "verdict 'pass'", "the verdict is 'preset:deny-all'"),
    ),
    (
        "non-string-key",
        """
        version: 1
        rules:
          - id: r1
            when: {tool: x, args: {1: main}}
            decision: DENY
        """,
        4,
        "r1",
        ("key 1 is not a string",),
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "rule_id", "words"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_names_file_line_and_rule(
    tmp_path: Path, text: str, line: int, rule_id: str | None, words: tuple[str, ...]
) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert f"{path}:{line}: " in message, message
    if rule_id is not None:
        assert f"rule {rule_id!r}" in message, message
    for word in words:
        assert word in message, message


def test_all_problems_are_reported_together_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - id: a
            when: {tool: x, args: {m: {regex: "("}}}
            decision: DENY
          - id: b
            when: {tool: y}
            decision: REWRITE
          - id: a
            when: {tool: z}
            decision: ALLOW
        """,
    )
    with pytest.raises(PolicyValidationError) as info:
        load_policy(path)
    lines = [line for line, _, _ in info.value.problems]
    assert lines == [4, 6, 9]
    assert len(str(info.value).splitlines()) == 3


def test_an_empty_argument_path_is_one_message_naming_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - {id: r1, when: {tool: x, args: {"": x}}, decision: DENY}
        """,
    )
    message = error_of(path)
    assert len(message.splitlines()) == 1, message
    assert f"{path}:3: rule 'r1' (rules[0].when.args[\"\"]): '' is not an argument path" in message


def test_schema_problems_do_not_hide_semantic_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - id: a
            whn: {tool: x}
            decision: DENY
          - id: b
            when: {tool: y, args: {m: {regex: "("}}}
            decision: DENY
          - id: a
            when: {tool: z}
            decision: ALLOW
          - id: c
            when: {tool: z}
            decision: REWRITE
        """,
    )
    with pytest.raises(PolicyValidationError) as info:
        load_policy(path)
    found = [(line, message.split(":")[0]) for line, _, message in info.value.problems]
    assert found == [
        (3, "missing required key 'when'"),  # schema: rule a
        (4, "unknown key 'whn' (did you mean 'when'?)"),
        (7, "bad regex '('"),  # semantic, in a schema-valid rule
        (9, "duplicate rule id 'a' (first defined at line 3)"),
        (12, "decision REWRITE needs a `rewrite"),
    ]


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "On", "YES", "y", "n"])
def test_yaml_1_1_boolean_words_stay_strings(tmp_path: Path, word: str) -> None:
    policy = load_policy(
        write(
            tmp_path,
            f"""
            version: 1
            rules:
              - id: r1
                when: {{tool: x, args: {{mode: {word}, force: true, dry: False}}}}
                decision: DENY
            """,
        )
    )
    assert policy.canonical["rules"][0]["when"]["args"] == {
        "mode": {"glob": [word]},
        "force": {"equals": True},
        "dry": {"equals": False},
    }
    call = ToolCall("x", {"mode": word, "force": True, "dry": False})
    assert policy.decide(call).decision == "DENY"


@pytest.mark.parametrize(
    ("targets", "when", "dead"),
    [
        ([], {"tool": "git_commit", "branch": "main"}, True),
        ([{"repo": "{repo_path}"}], {"tool": "git_commit", "branch": "main"}, True),
        ([{"tools": ["push"], "branch": "{b}"}], {"tool": "git_commit", "branch": "main"}, True),
        ([{"tools": ["push"], "branch": "{b}"}], {"tool": "git_*", "branch": "main"}, True),
        ([{"tools": ["git_*"], "branch": "{b}"}], {"tool": "git_commit", "branch": "main"}, False),
        ([{"tools": ["push"], "branch": "{b}"}], {"tool": "pu*", "branch": "main"}, False),
        ([{"branch": "{b}"}], {"tool": "git_commit", "branch": "main"}, False),
        ([{"tools": ["push"], "branch": "{b}"}], {"branch": "main"}, False),
        # Two wildcard selectors may overlap: not reported (no false alarms).
        ([{"tools": ["gh_*"], "path": "{p}"}], {"tool": "git_*", "path": "*.pem"}, False),
        ([], {"tool": "git_commit", "args": {"branch": "main"}}, False),  # an argument
    ],
)
def test_target_conditions_no_target_can_feed_are_warned_about(
    targets: list[dict[str, Any]], when: dict[str, Any], dead: bool
) -> None:
    rule = {"id": "r", "when": when, "decision": "DENY"}
    policy = load_policy({"version": 1, "targets": targets, "rules": [rule]})
    if not dead:
        assert policy.warnings == ()
        return
    field = next(f for f in ("repo", "branch", "path") if f in when)
    assert policy.warnings == (
        f"<mapping>: rule 'r' (rules[0].when.{field}): condition `{field}` can never hold: "
        f"no `targets:` entry gives a {field} for tool {when['tool']!r}, so the rule never "
        "matches (see Targets in POLICY.md)",
    )


def test_a_blast_radius_entry_no_target_can_feed_is_warned_about() -> None:
    policy = load_policy({"version": 1, "blast_radius": [{"branch": "main", "radius": "High"}]})
    assert policy.warnings == (
        "<mapping>: blast_radius[0].branch: condition `branch` can never hold: no `targets:` "
        "entry gives a branch for any tool, so this blast-radius entry never applies "
        "(see Targets in POLICY.md)",
    )


def test_empty_missing_and_non_mapping_files(tmp_path: Path) -> None:
    assert "the policy is empty" in error_of(write(tmp_path, "# nothing\n"))
    assert "must be a mapping, got a list" in error_of(write(tmp_path, "- a\n- b\n"))
    missing = tmp_path / "nope.yaml"
    assert f"{missing}: cannot read the policy file" in error_of(missing)


def test_mapping_source_errors_name_the_rule_without_a_line() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy({"version": 1, "rules": [{"id": "x", "when": {"tool": 3}, "decision": "DENY"}]})
    assert "<mapping>: rule 'x' (rules[0].when.tool)" in str(info.value)


def test_mapping_values_json_cannot_hold_are_named_at_their_place() -> None:
    rule = {"id": "a", "when": {"tool": "x", "args": {"s": {"equals": {1, 2}}}}, "decision": "DENY"}
    with pytest.raises(PolicyError) as info:
        load_policy({"version": 1, "rules": [rule]})
    assert (
        str(info.value)
        == "<mapping>: rule 'a' (rules[0].when.args.s.equals): a set is not a JSON value"
    )
    # A non-string key where the schema matches key patterns: reported, not a crash.
    test = {"call": {"tool": "x", "annotations": {1: True}}, "expect": "ALLOW"}
    with pytest.raises(PolicyError) as info:
        load_policy({"version": 1, "tests": [test]})
    assert str(info.value) == "<mapping>: tests[0].call.annotations: key 1 is not a string"


def test_dates_stay_strings_and_merge_keys_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        base: &base {tool: x}
        """,
    )
    assert "unknown key 'base'" in error_of(path)  # anchors need a known key to live in
    policy = load_policy(
        write(
            tmp_path,
            """
            version: 1
            rules:
              - id: frozen
                when: &w {tool: deploy, args: {date: 2024-01-01}}
                decision: DENY
              - id: merged
                when: {<<: *w, tool: other}
                decision: DENY
            """,
        )
    )
    assert policy.decide(ToolCall("deploy", {"date": "2024-01-01"})).decision == "DENY"
    assert policy.decide(ToolCall("other", {"date": "2024-01-01"})).policy_rule == "merged"


def test_loaded_from_file_records_the_source(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\n")
    policy = load_policy(path)
    assert policy.source == str(path)
    assert load_policy({"version": 1}).source is None
    assert policy.version == load_policy({"version": 1}).version


def _objects(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            found.append(node)
        for value in node.values():
            found.extend(_objects(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_objects(value))
    return found


def test_schema_ships_in_the_package_and_closes_every_object() -> None:
    text = resources.files("tooltrail.policy").joinpath("schema.json").read_text("utf-8")
    shipped = json.loads(text)
    assert shipped == schema()
    jsonschema.Draft202012Validator.check_schema(shipped)
    objects = _objects(shipped)
    assert len(objects) >= 10
    assert all(o.get("additionalProperties") is False for o in objects)


@pytest.mark.parametrize("name", ["policy-git.yaml", "policy-github.yaml"])
def test_example_policies_load_and_validate_against_the_schema(name: str) -> None:
    import yaml

    document = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema()).validate(document)
    policy = load_policy(EXAMPLES / name)
    assert {r.decision for r in policy.rules} == {"ALLOW", "DENY", "REWRITE", "REQUIRE_APPROVAL"}
    assert policy.tests  # they carry inline tests (run by test_policy_cli)


def test_reserved_verdicts_are_never_rule_ids_and_hint_spellings_are_typed() -> None:
    """The reserved ids are exactly the verdicts that are not rules, and every MCP hint
    spelling the engine reads is one the schema types (inline tests cannot slip "yes")."""
    from tooltrail.policy.model import (
        ANNOTATION_HINTS,
        PRESET_VERDICT_PREFIX,
        VERDICT_PASS,
        VERDICT_POLICY_ERROR,
    )

    for rule_id in (VERDICT_PASS, VERDICT_POLICY_ERROR, PRESET_VERDICT_PREFIX + "approve-all"):
        with pytest.raises(PolicyValidationError) as info:
            load_policy({"version": 1, "rules": [{"id": rule_id, "when": {}, "decision": "DENY"}]})
        assert f"rule {rule_id!r} (rules[0].id)" in str(info.value)
    # Look-alikes are ordinary ids.
    for rule_id in ("Pass", "pass-through", "policy-errors"):
        load_policy({"version": 1, "rules": [{"id": rule_id, "when": {}, "decision": "DENY"}]})
    validator = jsonschema.Draft202012Validator(schema())
    for name in (n for pair in ANNOTATION_HINTS for n in pair):
        for hint, valid in (("yes", False), (1, False), (True, True), (None, True)):
            call = {"tool": "t", "annotations": {name: hint, "title": "T"}}
            doc = {"version": 1, "tests": [{"call": call, "expect": "ALLOW"}]}
            assert validator.is_valid(doc) is valid, (name, hint)
