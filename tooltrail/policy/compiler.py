"""Compile a schema-valid policy document into matchers, and normalize it for hashing.

One pass walks the document, builds the compiled objects the engine evaluates and, beside
them, the *canonical* form whose hash is the policy version (synonyms folded, glob lists
sorted, durations in seconds; descriptions and inline tests left out because they do not
change any decision). Semantic problems the JSON Schema cannot express (duplicate ids, bad
regexes, a REWRITE without ``rewrite:``, bad timeouts, unknown template placeholders…) are
collected with the document path they concern; the loader turns paths into file lines.

One file past 600 lines on purpose: one pass builds the compiled matchers and the
canonical form the policy version hashes, and they must stay in step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tooltrail.access import ROLE_PREFIX, ROLES
from tooltrail.policy.durations import parse_duration
from tooltrail.policy.matchers import (
    ArgPath,
    ArgPred,
    Check,
    CompareCheck,
    EqualsCheck,
    ExistsCheck,
    FieldGlobPred,
    GlobCheck,
    GlobSet,
    HintPred,
    InCheck,
    Pred,
    RegexCheck,
    TargetTemplate,
    TemplateError,
    ValueTemplate,
)
from tooltrail.policy.model import (
    BLAST_RADII,
    DENY,
    PRESET_VERDICT_PREFIX,
    REQUIRE_APPROVAL,
    REWRITE,
    STRICTNESS,
    VERDICT_PASS,
    VERDICT_POLICY_ERROR,
    ApprovalSettings,
    ToolCall,
)
from tooltrail.policy.regex import PolicyRegex, RegexError, compile_regex
from tooltrail.policy.rewrite import Redactor, Rewrite
from tooltrail.semconv import VERDICT_SESSION_CANCELED, VERDICT_SESSION_CONTROL_ERROR

DocPath = tuple[str | int, ...]

PRESETS: Final = ("deny-all", "approve-reads", "approve-all")
DEFAULT_APPROVAL: Final = ApprovalSettings(timeout_s=600.0, on_timeout=DENY, approvers=("*",))
MAX_APPROVAL_TIMEOUT_S: Final = 7 * 86_400.0
VERSION_HEX_CHARS: Final = 16
_RESERVED_IDS: Final = {
    VERDICT_PASS: "the verdict when no rule matches and `default` decides",
    VERDICT_POLICY_ERROR: "the verdict when the policy cannot load or evaluate a call",
    VERDICT_SESSION_CANCELED: "the verdict of calls refused because their session was canceled",
    VERDICT_SESSION_CONTROL_ERROR: "the verdict when session control cannot be read",
}
"""Verdicts that are not rules, so no rule id may take them (nor ``preset:…``)."""
TEST_SESSION_ID: Final = "test-session"
"""Session id of inline-test calls that do not set ``session``."""
_GLOB_FIELDS: Final = ("agent", "server", "repo", "branch", "path")
TARGET_FIELDS: Final = ("repo", "branch", "path")
_HINTS: Final = ("readOnlyHint", "destructiveHint")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy, at a document path (``("rules", 2, "when")``)."""

    path: DocPath
    message: str


class Condition:
    """A compiled ``when`` (or blast-radius selector): a tool glob plus other predicates,
    all of which must hold. The tool glob is applied by the engine's tool index; ``test``
    checks the rest (None when there is nothing else to check)."""

    __slots__ = ("preds", "test", "tools")

    def __init__(self, tools: GlobSet | None, preds: tuple[Pred, ...]) -> None:
        self.tools = tools
        self.preds = preds
        self.test: Callable[[Any], bool] | None = None
        if len(preds) == 1:
            self.test = preds[0].test  # skip a call level in the common one-predicate case
        elif preds:
            self.test = self._all

    def _all(self, env: Any) -> bool:
        # A plain loop: this is decide()'s hot path and all() over a generator is slower.
        for pred in self.preds:  # noqa: SIM110
            if not pred.test(env):
                return False
        return True

    def matches(self, env: Any) -> bool:
        return self.test is None or self.test(env)

    def describe(self) -> list[str]:
        out = [f"tool matches {self.tools.describe()}"] if self.tools is not None else []
        return out + [p.describe() for p in self.preds]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    index: int
    decision: str
    rank: int
    reason: str | None
    radius: int  # rank in BLAST_RADII, -1 when the rule sets none
    cond: Condition
    rewrite: Rewrite | None
    approval: ApprovalSettings | None
    line: int | None


@dataclass(frozen=True, slots=True)
class CompiledBlast:
    index: int
    radius: int
    cond: Condition
    line: int | None


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    index: int
    tools: GlobSet | None
    servers: GlobSet | None
    repo: TargetTemplate | None
    branch: TargetTemplate | None
    path: TargetTemplate | None


@dataclass(frozen=True, slots=True)
class InlineTest:
    """A ``tests:`` entry: a call and what its decision must look like."""

    rule_id: str | None  # None for the policy-level ``tests:``
    index: int
    line: int | None
    call: ToolCall
    expect: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Compiled:
    canonical: dict[str, Any]
    version: str
    default: str | None
    preset: str | None
    reads: GlobSet | None
    approval: ApprovalSettings
    targets: tuple[CompiledTarget, ...]
    blasts: tuple[CompiledBlast, ...]
    rules: tuple[CompiledRule, ...]
    tests: tuple[InlineTest, ...]
    warnings: tuple[Problem, ...] = ()  # legal but surely a mistake (a dead condition)
    # The gateway's answer to a changed tool definition (None: not set, the gateway's default).
    pin_tools: str | None = None


Locate = Callable[[DocPath], int | None]


def policy_version(canonical: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the normalized policy, first 16 hex digits."""
    text = json.dumps(
        canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:VERSION_HEX_CHARS]


def _globs(value: Any) -> list[str]:
    return sorted({value} if isinstance(value, str) else set(value))


class _Builder:
    def __init__(self, doc: Mapping[str, Any], locate: Locate) -> None:
        self.doc = doc
        self.locate = locate
        self.problems: list[Problem] = []
        self.default_approval = DEFAULT_APPROVAL

    def problem(self, path: DocPath, message: str) -> None:
        self.problems.append(Problem(path, message))

    # -- conditions --------------------------------------------------------------------

    def tool_globs(self, node: Mapping[str, Any], path: DocPath) -> list[str] | None:
        if "tool" in node and "tools" in node:
            self.problem((*path, "tools"), "give either `tool` or `tools` (synonyms), not both")
        raw = node.get("tool", node.get("tools"))
        return None if raw is None else _globs(raw)

    def condition(self, node: Mapping[str, Any], path: DocPath) -> tuple[Condition, dict[str, Any]]:
        canon: dict[str, Any] = {}
        tools = self.tool_globs(node, path)
        if tools is not None:
            canon["tool"] = tools
        preds: list[Pred] = []
        for name in _GLOB_FIELDS:
            if name in node:
                canon[name] = _globs(node[name])
                preds.append(FieldGlobPred(name, GlobSet(canon[name])))
        for hint in _HINTS:
            if hint in node:
                canon[hint] = bool(node[hint])
                preds.append(HintPred(hint, bool(node[hint])))
        args = node.get("args")
        if args:
            canon["args"] = {}
            for key, matcher in args.items():
                checks, canon_m = self.arg_matcher(matcher, (*path, "args", key))
                canon["args"][key] = canon_m
                preds.append(ArgPred(ArgPath(key), checks))
        return Condition(None if tools is None else GlobSet(tools), tuple(preds)), canon

    def arg_matcher(self, matcher: Any, path: DocPath) -> tuple[list[Check], dict[str, Any]]:
        if isinstance(matcher, str):
            return [GlobCheck(GlobSet([matcher]))], {"glob": [matcher]}
        if isinstance(matcher, list):
            globs = _globs(matcher)
            return [GlobCheck(GlobSet(globs))], {"glob": globs}
        if not isinstance(matcher, Mapping):
            # A bare number, boolean or null means exact (JSON) equality.
            return [EqualsCheck(matcher)], {"equals": matcher}
        checks: list[Check] = []
        canon: dict[str, Any] = {}
        for op, operand in matcher.items():
            if op == "glob":
                canon[op] = _globs(operand)
                checks.append(GlobCheck(GlobSet(canon[op])))
            elif op == "regex":
                rx = self.regex(operand, (*path, op))
                canon[op] = operand
                if rx is not None:
                    checks.append(RegexCheck(rx))
            elif op == "in":
                canon[op] = list(operand)
                checks.append(InCheck(operand))
            elif op == "equals":
                canon[op] = operand
                checks.append(EqualsCheck(operand))
            elif op in ("gt", "gte", "lt", "lte"):
                try:
                    bound = float(operand)
                except OverflowError:  # an integer past 1.8e308: no float holds it
                    self.problem((*path, op), f"{op}: the number is out of range (±1.8e308)")
                    continue
                canon[op] = bound
                checks.append(CompareCheck(op, bound))
            elif op == "exists":
                canon[op] = bool(operand)
                checks.append(ExistsCheck(bool(operand)))
        return checks, canon

    def regex(self, pattern: str, path: DocPath) -> PolicyRegex | None:
        try:
            return compile_regex(pattern)
        except RegexError as e:
            self.problem(path, str(e))
            return None

    # -- top-level sections ------------------------------------------------------------

    def approval(self, node: Mapping[str, Any] | None, path: DocPath) -> ApprovalSettings:
        base = DEFAULT_APPROVAL if path == ("approval",) else self.default_approval
        if node is None:
            return base
        timeout_s = base.timeout_s
        if "timeout" in node:
            try:
                timeout_s = parse_duration(node["timeout"])
            except ValueError as e:
                self.problem((*path, "timeout"), f"bad approval timeout: {e}")
            else:
                if timeout_s > MAX_APPROVAL_TIMEOUT_S:
                    self.problem(
                        (*path, "timeout"),
                        f"approval timeout {node['timeout']!r} is longer than the maximum 7d",
                    )
        approvers = tuple(node.get("approvers", base.approvers))
        for i, entry in enumerate(approvers):
            # `role:NAME` names every user holding that role or a higher one
            # (tooltrail.access); a misspelt role would match nobody, silently.
            if entry.startswith(ROLE_PREFIX) and entry[len(ROLE_PREFIX) :] not in ROLES:
                known = ", ".join(ROLE_PREFIX + r for r in ROLES)
                self.problem((*path, "approvers", i), f"unknown role in {entry!r}: one of {known}")
        return ApprovalSettings(
            timeout_s=timeout_s,
            on_timeout=str(node.get("on_timeout", base.on_timeout)),
            approvers=approvers,
        )

    def targets(self, canon: dict[str, Any]) -> tuple[CompiledTarget, ...]:
        out: list[CompiledTarget] = []
        canon["targets"] = []
        for i, node in enumerate(self.doc.get("targets") or []):
            target, entry = self.target(i, node)
            canon["targets"].append(entry)
            out.append(target)
        return tuple(out)

    def target(self, i: int, node: Mapping[str, Any]) -> tuple[CompiledTarget, dict[str, Any]]:
        path: DocPath = ("targets", i)
        tools = self.tool_globs(node, path)
        servers = _globs(node["server"]) if "server" in node else None
        entry: dict[str, Any] = {"tool": tools, "server": servers}
        templates: dict[str, TargetTemplate | None] = {}
        for name in TARGET_FIELDS:
            templates[name] = None
            if name in node:
                entry[name] = node[name]
                try:
                    templates[name] = TargetTemplate(node[name])
                except TemplateError as e:
                    self.problem((*path, name), str(e))
        if not any(name in node for name in TARGET_FIELDS):
            self.problem(path, "a target needs at least one of repo, branch, path")
        target = CompiledTarget(
            index=i,
            tools=None if tools is None else GlobSet(tools),
            servers=None if servers is None else GlobSet(servers),
            repo=templates["repo"],
            branch=templates["branch"],
            path=templates["path"],
        )
        return target, entry

    def blasts(self, canon: dict[str, Any]) -> tuple[CompiledBlast, ...]:
        out: list[CompiledBlast] = []
        canon["blast_radius"] = []
        for i, node in enumerate(self.doc.get("blast_radius") or []):
            blast, entry = self.blast(i, node)
            canon["blast_radius"].append(entry)
            out.append(blast)
        return tuple(out)

    def blast(self, i: int, node: Mapping[str, Any]) -> tuple[CompiledBlast, dict[str, Any]]:
        path: DocPath = ("blast_radius", i)
        cond, canon_cond = self.condition(node, path)
        radius = BLAST_RADII.index(node["radius"])
        entry = {"when": canon_cond, "radius": node["radius"]}
        return CompiledBlast(i, radius, cond, self.locate(path)), entry

    def rewrite(
        self, node: Mapping[str, Any], path: DocPath
    ) -> tuple[Rewrite | None, dict[str, Any]]:
        canon: dict[str, Any] = {}
        remove = [ArgPath(p) for p in node.get("remove", [])]
        if remove:
            canon["remove"] = [p.text for p in remove]
        sets: list[tuple[ArgPath, ValueTemplate | None, Any]] = []
        for key, value in (node.get("set") or {}).items():
            template = None
            if isinstance(value, str):
                try:
                    template = ValueTemplate(value)
                except TemplateError as e:
                    self.problem((*path, "set", key), str(e))
                    continue
            sets.append((ArgPath(key), template, value))
        if sets:
            canon["set"] = dict(node["set"])
        keys: list[ArgPath] = []
        regexes: list[PolicyRegex] = []
        redact_canon: list[Any] = []
        for j, item in enumerate(node.get("redact") or []):
            if isinstance(item, str):
                keys.append(ArgPath(item))
                redact_canon.append(item)
            else:
                rx = self.regex(item["regex"], (*path, "redact", j, "regex"))
                if rx is not None:
                    regexes.append(rx)
                redact_canon.append({"regex": item["regex"]})
        if redact_canon:
            canon["redact"] = redact_canon
        redactor = Redactor(keys, regexes) if (keys or regexes) else None
        return Rewrite(remove, sets, redactor), canon

    def rule_id(self, i: int, rule_id: str, seen: dict[str, int]) -> None:
        """Reserved and duplicate rule ids (``seen``: id -> index of its first rule)."""
        path: DocPath = ("rules", i, "id")
        reserved = _RESERVED_IDS.get(rule_id)
        if reserved is None and rule_id.startswith(PRESET_VERDICT_PREFIX):
            reserved = "the verdict of a preset"
        if reserved is not None:
            # A rule named like a verdict would make its decisions read as something else.
            self.problem(path, f"rule id {rule_id!r} is reserved: it is {reserved}")
        if rule_id in seen:
            first = self.locate(("rules", seen[rule_id]))
            where = f" (first defined at line {first})" if first is not None else ""
            self.problem(path, f"duplicate rule id {rule_id!r}{where}")
        else:
            seen[rule_id] = i

    def rule(
        self, i: int, node: Mapping[str, Any], seen: dict[str, int]
    ) -> tuple[CompiledRule, dict[str, Any]]:
        path: DocPath = ("rules", i)
        rule_id: str = node["id"]
        self.rule_id(i, rule_id, seen)
        decision: str = node["decision"]
        cond, canon_cond = self.condition(node["when"], (*path, "when"))
        canon: dict[str, Any] = {"id": rule_id, "decision": decision, "when": canon_cond}
        for key in ("reason", "blast_radius"):
            if key in node:
                canon[key] = node[key]
        rewrite = None
        if decision == REWRITE:
            if "rewrite" not in node:
                self.problem(path, "decision REWRITE needs a `rewrite:` (set, remove or redact)")
            else:
                rewrite, canon["rewrite"] = self.rewrite(node["rewrite"], (*path, "rewrite"))
        elif "rewrite" in node:
            self.problem(
                (*path, "rewrite"), f"`rewrite:` only applies to REWRITE, not to {decision}"
            )
        approval = None
        if decision == REQUIRE_APPROVAL:
            approval = self.approval(node.get("approval"), (*path, "approval"))
            canon["approval"] = _canon_approval(approval)
        elif "approval" in node:
            self.problem(
                (*path, "approval"),
                f"`approval:` only applies to REQUIRE_APPROVAL, not to {decision}",
            )
        compiled = CompiledRule(
            id=rule_id,
            index=i,
            decision=decision,
            rank=STRICTNESS[decision],
            reason=node.get("reason"),
            radius=BLAST_RADII.index(node["blast_radius"]) if "blast_radius" in node else -1,
            cond=cond,
            rewrite=rewrite,
            approval=approval,
            line=self.locate(path),
        )
        return compiled, canon

    def tests(self, rules: Sequence[CompiledRule], preset: str | None) -> tuple[InlineTest, ...]:
        # The base layer gives `pass` without a preset, and only its own verdict with one.
        base_verdict = VERDICT_PASS if preset is None else PRESET_VERDICT_PREFIX + preset
        verdicts = {r.id for r in rules} | {base_verdict, VERDICT_POLICY_ERROR}
        sources: list[tuple[str | None, DocPath, Sequence[Any]]] = [
            (None, ("tests",), self.doc.get("tests") or [])
        ]
        for i, rule in enumerate(self.doc.get("rules") or []):
            sources.append((rule["id"], ("rules", i, "tests"), rule.get("tests") or []))
        out: list[InlineTest] = []
        for rule_id, base, entries in sources:
            for j, entry in enumerate(entries):
                expect = entry["expect"]
                expect = {"decision": expect} if isinstance(expect, str) else dict(expect)
                if "rule" in expect and expect["rule"] not in verdicts:
                    self.problem(
                        (*base, j, "expect", "rule"),
                        f"test expects verdict {expect['rule']!r}, which no rule gives "
                        f"(with no rule matching, the verdict is {base_verdict!r})",
                    )
                call = entry["call"]
                out.append(
                    InlineTest(
                        rule_id=rule_id,
                        index=j,
                        line=self.locate((*base, j)),
                        call=ToolCall(
                            tool=call["tool"],
                            arguments=dict(call.get("args") or {}),
                            agent=call.get("agent"),
                            # Every real call has a session id (the trace id at worst),
                            # so tests get one too unless they set their own.
                            session_id=call.get("session", TEST_SESSION_ID),
                            server=call.get("server"),
                            annotations=call.get("annotations"),
                        ),
                        expect=expect,
                    )
                )
        return tuple(out)

    def build(self) -> Compiled | None:
        doc = self.doc
        canon: dict[str, Any] = {"version": doc["version"]}
        preset = doc.get("preset")
        default = doc.get("default")
        self.base_layer()
        if preset is None and default is None:
            default = "ALLOW"
        canon["preset"] = preset
        canon["default"] = None if preset is not None else default
        reads = None
        if "reads" in doc:
            canon["reads"] = _globs(doc["reads"])
            reads = GlobSet(canon["reads"])
        self.default_approval = self.approval(doc.get("approval"), ("approval",))
        canon["approval"] = _canon_approval(self.default_approval)
        if "pin_tools" in doc:  # only when set: policies without it keep their version
            canon["pin_tools"] = doc["pin_tools"]
        targets = self.targets(canon)
        blasts = self.blasts(canon)
        rules: list[CompiledRule] = []
        canon["rules"] = []
        seen: dict[str, int] = {}
        for i, node in enumerate(doc.get("rules") or []):
            rule, canon_rule = self.rule(i, node, seen)
            rules.append(rule)
            canon["rules"].append(canon_rule)
        tests = self.tests(rules, preset)
        if self.problems:
            return None
        warnings = self.dead_target_conditions(targets, blasts, rules)
        try:
            version = policy_version(canon)
        except (TypeError, ValueError) as e:  # e.g. NaN or a non-JSON value in `equals:`
            self.problem((), f"policy holds a value that is not plain JSON: {e}")
            return None
        return Compiled(
            canonical=canon,
            version=version,
            default=canon["default"],
            preset=preset,
            reads=reads,
            approval=self.default_approval,
            targets=targets,
            blasts=blasts,
            rules=tuple(rules),
            tests=tests,
            warnings=tuple(warnings),
            pin_tools=canon.get("pin_tools"),
        )

    def base_layer(self) -> None:
        """``preset`` with ``default``, and ``reads`` without ``approve-reads``."""
        preset, default = self.doc.get("preset"), self.doc.get("default")
        if preset is not None and default is not None:
            self.problem(("default",), f"preset {preset!r} already sets the default; remove it")
        if "reads" in self.doc and preset != "approve-reads":
            self.problem(("reads",), "`reads:` only applies with `preset: approve-reads`")

    def dead_target_conditions(
        self,
        targets: Sequence[CompiledTarget],
        blasts: Sequence[CompiledBlast],
        rules: Sequence[CompiledRule],
    ) -> list[Problem]:
        """Warnings for repo / branch / path conditions that can never hold because no
        ``targets:`` entry gives that field for the tools they apply to: targets come only
        from ``targets:``, and an absent target never matches, so such a DENY would be a
        silent no-op. Only certain cases are reported (two wildcard tool selectors are
        assumed to overlap)."""
        conds: list[tuple[DocPath, Condition, str]] = [
            (("rules", r.index, "when"), r.cond, "the rule never matches") for r in rules
        ]
        conds += [
            (("blast_radius", b.index), b.cond, "this blast-radius entry never applies")
            for b in blasts
        ]
        # Per target field, the tool selectors of the entries that give it.
        givers = {f: [t.tools for t in targets if getattr(t, f) is not None] for f in TARGET_FIELDS}
        out: list[Problem] = []
        for path, cond, consequence in conds:
            for pred in cond.preds:
                if not isinstance(pred, FieldGlobPred) or pred.field not in givers:
                    continue
                field = pred.field
                if any(tools_may_overlap(cond.tools, g) for g in givers[field]):
                    continue
                tools = "any tool" if cond.tools is None else f"tool {cond.tools.describe()}"
                out.append(
                    Problem(
                        (*path, field),
                        f"condition `{field}` can never hold: no `targets:` entry gives a "
                        f"{field} for {tools}, so {consequence} (see Targets in POLICY.md)",
                    )
                )
        return out


def tools_may_overlap(a: GlobSet | None, b: GlobSet | None) -> bool:
    """Whether some tool name could match both selectors (None: every tool). Exact for
    literal names; two selectors that both hold wildcards are assumed to overlap."""
    if a is None or b is None or (a.has_wildcards and b.has_wildcards):
        return True
    return any(b.match(name) for name in a.literals) or any(a.match(name) for name in b.literals)


def check_entries(
    doc: Mapping[str, Any], locate: Locate, broken: Callable[[DocPath], bool]
) -> list[Problem]:
    """The semantic problems of the entries (rules, targets, blast-radius entries, the
    top-level approval) in which the JSON Schema found nothing wrong, so that a policy
    with schema problems gets its duplicate ids, bad regexes, bad templates… reported in
    the same run. ``broken(path)`` says whether a schema problem lies at or under
    ``path``. Inline-test verdicts are only checked once the whole document is valid."""
    b = _Builder(doc, locate)
    if not any(broken((key,)) for key in ("preset", "default", "reads")):
        b.base_layer()
    approval = doc.get("approval")
    if isinstance(approval, Mapping) and not broken(("approval",)):
        b.default_approval = b.approval(approval, ("approval",))
    for section, compile_one in (("targets", b.target), ("blast_radius", b.blast)):
        nodes = doc.get(section)
        for i, node in enumerate(nodes if isinstance(nodes, list) else []):
            if not broken((section, i)):
                compile_one(i, node)
    rules = doc.get("rules")
    seen: dict[str, int] = {}
    for i, node in enumerate(rules if isinstance(rules, list) else []):
        if not broken(("rules", i)):
            b.rule(i, node, seen)
        elif isinstance(node, Mapping) and isinstance(node.get("id"), str):
            b.rule_id(i, node["id"], seen)  # duplicates do not wait for the rest
    return b.problems


def _canon_approval(approval: ApprovalSettings) -> dict[str, Any]:
    return {
        "timeout_s": approval.timeout_s,
        "on_timeout": approval.on_timeout,
        "approvers": sorted(set(approval.approvers)),
    }


def build(doc: Mapping[str, Any], locate: Locate) -> tuple[Compiled | None, list[Problem]]:
    """Compile a schema-valid document; returns (compiled, []) or (None, problems)."""
    builder = _Builder(doc, locate)
    return builder.build(), builder.problems


__all__ = [
    "DEFAULT_APPROVAL",
    "PRESETS",
    "TARGET_FIELDS",
    "Compiled",
    "CompiledBlast",
    "CompiledRule",
    "CompiledTarget",
    "Condition",
    "InlineTest",
    "Problem",
    "build",
    "check_entries",
    "policy_version",
    "tools_may_overlap",
]
