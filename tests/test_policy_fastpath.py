"""``Policy.decide`` tests a rule whose whole condition is one check on one top-level
argument directly on the argument's value (no Condition / ArgPred call levels). These
tests pin that this shortcut decides exactly what the general predicate path decides:
``Policy.explain`` evaluates every rule through ``Pred.test``, independently of it."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tooltrail.policy import Policy, ToolCall, load_policy

TOOL = "t"
KEYS = ("branch", "count", "files", "flag", "nested")

# One rule per condition shape: every operator on a plain key (the shortcut), and shapes
# that must keep the general path (dotted path, two checks on one key, two keys, no args).
RULES: list[dict[str, Any]] = [
    {"id": "glob", "when": {"tool": TOOL, "args": {"branch": "feat*"}}},
    {"id": "glob-list", "when": {"tool": TOOL, "args": {"branch": ["main", "rel-?"]}}},
    {"id": "literal", "when": {"tool": TOOL, "args": {"branch": "main"}}},
    {"id": "regex", "when": {"tool": TOOL, "args": {"branch": {"regex": "e.t"}}}},
    {"id": "in", "when": {"tool": TOOL, "args": {"count": {"in": [1, "2", True, None]}}}},
    {"id": "equals", "when": {"tool": TOOL, "args": {"files": {"equals": ["a", "b"]}}}},
    {"id": "gt", "when": {"tool": TOOL, "args": {"count": {"gt": 1}}}},
    {"id": "exists", "when": {"tool": TOOL, "args": {"flag": {"exists": True}}}},
    {"id": "absent", "when": {"tool": TOOL, "args": {"flag": {"exists": False}}}},
    {"id": "files-glob", "when": {"tool": TOOL, "args": {"files": "*.env"}}},
    {"id": "dotted", "when": {"tool": TOOL, "args": {"nested.branch": "feat*"}}},
    {"id": "two-checks", "when": {"tool": TOOL, "args": {"count": {"gt": 0, "lt": 3}}}},
    {"id": "two-keys", "when": {"tool": TOOL, "args": {"branch": "*", "flag": True}}},
    {"id": "agent", "when": {"tool": TOOL, "agent": "bot-*"}},
    {"id": "tool-only", "when": {"tool": TOOL}},
    {"id": "wild-tool", "when": {"tool": "t*", "args": {"branch": "rel-*"}}},
]


def policy() -> Policy:
    rules = [{**r, "decision": "ALLOW"} for r in RULES]
    return load_policy({"version": 1, "default": "ALLOW", "rules": rules})


POLICY = policy()


class Text(str):
    """A str subclass: takes the general check, not the str shortcut."""


names = st.sampled_from(["main", "feature/x", "feat", "rel-1", "fe.t", "a", "b", "prod.env", "2"])
scalars = st.one_of(
    names,
    names.map(Text),
    st.text(max_size=6),
    st.integers(-3, 5),
    st.floats(allow_nan=False, max_value=5, min_value=-5),
    st.booleans(),
    st.none(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["branch", "x"]), scalars, max_size=2),
)
arguments = st.dictionaries(st.sampled_from(KEYS), values, max_size=len(KEYS))


def matched_by_explain(call: ToolCall) -> tuple[str, ...]:
    return tuple(r.rule_id for r in POLICY.explain(call).rules if r.matched)


def test_the_shortcut_is_taken_for_single_checks_only() -> None:
    decision = POLICY.decide(ToolCall(tool=TOOL, arguments={}))  # builds the tool's plan
    assert decision.policy_rule != "policy-error"
    plan = POLICY._plans[TOOL]
    direct = {rule.id for rule, _test, _key, check, _on_str in plan.rules if check is not None}
    on_str = {rule.id for rule, _test, _key, _check, on_str in plan.rules if on_str is not None}
    assert on_str == {"glob", "glob-list", "literal", "regex", "files-glob", "wild-tool"}
    assert direct == {
        "glob",
        "glob-list",
        "literal",
        "regex",
        "in",
        "equals",
        "gt",
        "exists",
        "absent",
        "files-glob",
        "wild-tool",
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=arguments, agent=st.sampled_from([None, "bot-1", "human"]))
def test_decide_matches_exactly_what_the_general_path_matches(
    args: dict[str, Any], agent: str | None
) -> None:
    call = ToolCall(tool=TOOL, arguments=args, agent=agent)
    assert POLICY.decide(call).policy_matched == matched_by_explain(call)


def test_known_cases() -> None:
    # The same assertion on hand-picked calls, so a failure names a readable case.
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"branch": "feature/x"}, {"glob", "regex", "absent"}),
        ({"branch": "main", "flag": None}, {"glob-list", "literal", "exists"}),
        ({"count": 2, "files": ["a", "b"]}, {"gt", "equals", "two-checks", "absent"}),
        (
            {"count": "2", "files": ["x", "prod.env"]},
            {"in", "gt", "two-checks", "files-glob", "absent"},
        ),
        ({"nested": {"branch": "feat"}}, {"dotted", "absent"}),
        ({"branch": 7, "flag": True}, {"exists", "two-keys"}),
        ({"branch": "rel-2", "flag": True}, {"glob-list", "exists", "two-keys", "wild-tool"}),
        (
            {"branch": Text("main"), "files": "x.env"},
            {"glob-list", "literal", "files-glob", "absent"},
        ),
    ]
    for args, expected in cases:
        call = ToolCall(tool=TOOL, arguments=args)
        got = set(POLICY.decide(call).policy_matched)
        assert got == expected | {"tool-only"}, args
        assert POLICY.decide(call).policy_matched == matched_by_explain(call)
