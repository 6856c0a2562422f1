"""The compiled policy: ``Policy.decide(call) -> Decision`` (pure, no I/O, never raises).

Rules, blast-radius entries and targets are indexed by tool name at load time (exact names
in a dict, glob patterns in a fallback list, tool-less entries for every tool); the merged,
file-ordered candidate lists for a tool name are cached, so a call evaluates only the rules
that can apply to its tool. Combination (SPEC §4): the strictest matching rule wins
(DENY > REQUIRE_APPROVAL > REWRITE > ALLOW), file order breaks ties; with no match the
preset or ``default`` decides.

One file past 600 lines on purpose: the decision, its explanation and the candidate
index are read together whenever the combination rule changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from tooltrail.policy.compiler import (
    TARGET_FIELDS,
    Compiled,
    CompiledBlast,
    CompiledRule,
    CompiledTarget,
    InlineTest,
)
from tooltrail.policy.matchers import (
    MISSING,
    AmbiguousArgumentError,
    ArgPred,
    Env,
    FieldGlobPred,
    GlobCheck,
    GlobSet,
    HintPred,
    Pred,
    RegexCheck,
    RewriteError,
    TargetTemplate,
    copy_json,
    first_scalar,
    read_only_hint,
)
from tooltrail.policy.model import (
    ALLOW,
    BLAST_RADII,
    DENY,
    PRESET_VERDICT_PREFIX,
    REQUIRE_APPROVAL,
    REWRITE,
    VERDICT_PASS,
    ApprovalSettings,
    Decision,
    ToolCall,
    make_decision,
    policy_error_decision,
)
from tooltrail.policy.rewrite import Redactor, text_redaction

_EMPTY_ARGS: Final[Mapping[str, Any]] = MappingProxyType({})
_NO_TARGETS: Final[tuple[None, None, None]] = (None, None, None)
# Distinct tool names seen is small in practice; the bound only stops a flood of random
# names from growing the cache without limit.
_PLAN_CACHE_MAX: Final = 4096

Targets = tuple[str | None, str | None, str | None]


class _ToolIndex:
    """Which entries (by position) can apply to a tool name."""

    def __init__(self, selectors: Sequence[GlobSet | None]) -> None:
        self.exact: dict[str, list[int]] = {}
        self.wild: list[tuple[GlobSet, int]] = []
        self.every: list[int] = []
        for i, sel in enumerate(selectors):
            if sel is None:
                self.every.append(i)
                continue
            for name in sel.literals:
                self.exact.setdefault(name, []).append(i)
            if sel.has_wildcards:
                self.wild.append((sel, i))

    def lookup(self, tool: str) -> list[int]:
        hits = set(self.exact.get(tool, ())) | set(self.every)
        hits.update(i for sel, i in self.wild if i not in hits and sel.match(tool))
        return sorted(hits)  # file order


_TargetStep = tuple[
    Callable[[str], object] | None,  # server glob matcher
    Callable[[Mapping[str, Any]], str | None] | None,  # repo renderer
    Callable[[Mapping[str, Any]], str | None] | None,  # branch renderer
    Callable[[Mapping[str, Any]], str | None] | None,  # path renderer
]


class _Plan:
    """Everything decide() needs for one tool name, flattened for the hot path."""

    __slots__ = ("blasts", "redacting", "rules", "target_fields", "targets")

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        blasts: Sequence[CompiledBlast],
        targets: Sequence[CompiledTarget],
    ) -> None:
        self.rules = tuple(_rule_step(r) for r in rules)
        self.blasts = tuple((b.radius, b.cond.test) for b in blasts)
        self.targets: tuple[_TargetStep, ...] = tuple(
            (
                None if t.servers is None else t.servers.match,
                None if t.repo is None else t.repo.render,
                None if t.branch is None else t.branch.render,
                None if t.path is None else t.path.render,
            )
            for t in targets
        )
        self.redacting = any(r.rewrite is not None and r.rewrite.redactor for r in rules)
        # Without server selectors, each target field is one renderer (fallback chains of
        # plain keys merged), so decide() calls at most three functions for targets.
        self.target_fields: tuple[_Render | None, _Render | None, _Render | None] | None = None
        if all(t.servers is None for t in targets):
            repo, branch, path = (
                _merge_renderers([getattr(t, name) for t in targets])
                for name in ("repo", "branch", "path")
            )
            self.target_fields = (repo, branch, path)


_Render = Callable[[Mapping[str, Any]], str | None]
_RuleStep = tuple[
    CompiledRule,
    Callable[[Env], bool] | None,  # the condition's test (None: nothing left to check)
    str,  # the top-level argument key, when the condition is one check on it (else "")
    Callable[[Any], bool] | None,  # that check, given the argument's value (or MISSING)
    Callable[[str], object] | None,  # the same check for a str value: truthy = matched
]


def _rule_step(rule: CompiledRule) -> _RuleStep:
    """How decide() tests one rule. A condition that is one operator on one top-level
    argument (the usual shape) is tested on the argument's value directly, skipping the
    two call levels of ``Condition.test`` -> ``ArgPred.test`` (same lookup, same check);
    a glob or regex on a str value calls the compiled matcher itself (what
    ``GlobCheck.test`` / ``RegexCheck.test`` do first for a str)."""
    preds = rule.cond.preds
    if len(preds) == 1:
        pred = preds[0]
        if type(pred) is ArgPred and pred.key is not None and pred.single is not None:
            check = pred.checks[0]
            on_str: Callable[[str], object] | None = None
            if type(check) is GlobCheck:
                on_str = check.match
            elif type(check) is RegexCheck:
                on_str = check.rx.search
            return (rule, None, pred.key, pred.single, on_str)
    return (rule, rule.cond.test, "", None, None)


def _merge_renderers(templates: Sequence[TargetTemplate | None]) -> _Render | None:
    """One renderer giving the first entry's value that resolves (file order)."""
    steps: list[_Render] = []
    keys: list[str] = []
    for template in templates:
        if template is None:
            continue
        if template.simple_keys is not None:
            keys.extend(template.simple_keys)  # fallbacks across entries chain up
            continue
        if keys:
            steps.append(first_scalar(tuple(keys)))
            keys = []
        steps.append(template.render)
    if keys:
        steps.append(first_scalar(tuple(keys)))
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def render(args: Mapping[str, Any]) -> str | None:
        for step in steps:
            value = step(args)
            if value is not None:
                return value
        return None

    return render


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """How one rule fared for a call (``Policy.explain``)."""

    rule_id: str
    decision: str
    line: int | None
    applies: bool  # its tool selector matches the call's tool
    matched: bool
    failed: str | None  # the first condition that did not hold
    conditions: tuple[str, ...]
    note: str | None = None  # why that condition could not hold, when known


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    rules: tuple[RuleTrace, ...]
    blast_sources: tuple[str, ...]  # what set the blast radius, e.g. "blast_radius[0]"
    base: str | None  # how the base layer decided when no rule matched


class Policy:
    """A loaded, compiled policy. Build it with ``load_policy``."""

    def __init__(
        self, compiled: Compiled, source: str | None = None, warnings: Sequence[str] = ()
    ) -> None:
        self.version: str = compiled.version
        self.source: str | None = source
        # Legal but surely mistaken (e.g. a branch condition no target can feed), as
        # "file:line: rule 'id' (path): message"; `policy check` prints them.
        self.warnings: tuple[str, ...] = tuple(warnings)
        self._c = compiled
        # The base layer's answer when it does not depend on the call (all but approve-reads).
        self._base_fixed = None if compiled.preset == "approve-reads" else self._base(None)
        self._rule_index = _ToolIndex([r.cond.tools for r in compiled.rules])
        self._blast_index = _ToolIndex([b.cond.tools for b in compiled.blasts])
        self._target_index = _ToolIndex([t.tools for t in compiled.targets])
        self._plans: dict[str, _Plan] = {}

    # -- introspection -----------------------------------------------------------------

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self._c.rules)

    @property
    def rules(self) -> tuple[CompiledRule, ...]:
        return self._c.rules

    @property
    def tests(self) -> tuple[InlineTest, ...]:
        return self._c.tests

    @property
    def preset(self) -> str | None:
        return self._c.preset

    @property
    def default(self) -> str | None:
        return self._c.default

    @property
    def pin_tools(self) -> str | None:
        """``pin_tools:`` (deny, approve, warn) when the policy sets it."""
        return self._c.pin_tools

    @property
    def canonical(self) -> dict[str, Any]:
        """The normalized policy whose hash is ``version`` (a copy)."""
        result: dict[str, Any] = copy_json(self._c.canonical)
        return result

    def argument_keys(self) -> frozenset[str]:
        """Top-level argument keys any decision can depend on (conditions, targets,
        ``{args.…}`` rewrite templates and ``rewrite.set`` destinations, since a ``set``
        through a non-object fails closed as DENY); replay groups actions by these only.

        ``remove`` and ``redact`` paths are left out: they never fail, and what they
        change (the reported and rewritten arguments, the targets re-read after a
        redaction) is not an input of any condition."""
        keys: set[str] = set()
        conds = [r.cond for r in self._c.rules] + [b.cond for b in self._c.blasts]
        for cond in conds:
            for pred in cond.preds:
                if isinstance(pred, ArgPred):
                    keys |= pred.path.top_keys
        for target in self._c.targets:
            for template in (target.repo, target.branch, target.path):
                if template is not None:
                    for path in template.paths.values():
                        keys |= path.top_keys
        for rule in self._c.rules:
            if rule.rewrite is not None:
                for dest, value_template, _ in rule.rewrite.set:
                    keys |= dest.top_keys
                    if value_template is not None:
                        for path in value_template.paths.values():
                            keys |= path.top_keys
        return frozenset(keys)

    def uses_annotations(self) -> bool:
        """Whether MCP tool annotations can change a decision."""
        if self._c.preset == "approve-reads":
            return True
        conds = [r.cond for r in self._c.rules] + [b.cond for b in self._c.blasts]
        return any(isinstance(p, HintPred) for c in conds for p in c.preds)

    def uses_call_field(self, name: str) -> bool:
        """Whether a rewrite template reads ``session_id`` / ``agent`` / ``tool`` /
        ``server`` (a missing value makes the rewrite fail closed)."""
        for rule in self._c.rules:
            if rule.rewrite is not None:
                for _, value_template, _ in rule.rewrite.set:
                    if value_template is not None and name in value_template.uses:
                        return True
        return False

    # -- deciding ----------------------------------------------------------------------

    def decide(self, call: ToolCall) -> Decision:
        """The decision for ``call``. Pure and total: anything unexpected fails closed
        (DENY, verdict ``policy-error``) instead of raising."""
        # One function (no helper call) and local names: this runs on every tool call.
        try:
            args = call.arguments
            if type(args) is not dict:
                if args is None:
                    args = _EMPTY_ARGS
                elif not isinstance(args, Mapping):
                    return policy_error_decision(call, "arguments are not an object", self.version)
            plan = self._plans.get(call.tool)
            if plan is None:
                if not isinstance(call.tool, str):
                    return policy_error_decision(call, "tool name is not a string", self.version)
                plan = self._plan(call.tool)
            fields = plan.target_fields
            if fields is not None:
                repo_of, branch_of, path_of = fields
                targets = (
                    None if repo_of is None else repo_of(args),
                    None if branch_of is None else branch_of(args),
                    None if path_of is None else path_of(args),
                )
            else:
                targets = _run_targets(plan.targets, call.server, args)
            env = Env(call, args, targets)
            matched: list[CompiledRule] = []
            for rule, test, key, check, on_str in plan.rules:  # see _rule_step
                if check is None:
                    if test is None or test(env):
                        matched.append(rule)
                    continue
                value = args.get(key, MISSING)
                if on_str is not None and type(value) is str:  # str subclasses: check()
                    if on_str(value):
                        matched.append(rule)
                elif check(value):
                    matched.append(rule)

            radius = 0
            for blast_radius, test in plan.blasts:
                if blast_radius > radius and (test is None or test(env)):
                    radius = blast_radius
            winner: CompiledRule | None = None
            for rule in matched:
                if rule.radius > radius:
                    radius = rule.radius
                if winner is None or rule.rank > winner.rank:
                    winner = rule

            if winner is None:
                decision, verdict, reason, approval = self._base_fixed or self._base(call)
            else:
                decision, verdict, reason = winner.decision, winner.id, winner.reason
                approval = winner.approval  # set only on REQUIRE_APPROVAL rules
            if plan.redacting or decision == REWRITE:
                return self._rewrite_or_redact(
                    call, plan, matched, args, targets, radius, decision, verdict, reason, approval
                )
            return make_decision(
                decision,
                verdict,
                tuple([r.id for r in matched]),
                self.version,
                BLAST_RADII[radius],
                targets[0],
                targets[1],
                targets[2],
                args,
                None,
                reason,
                approval,
                0,
            )
        except AmbiguousArgumentError as e:  # the call's own arguments: say which
            return policy_error_decision(call, f"policy evaluation failed: {e}", self.version)
        except Exception as e:  # never let a policy bug break (or open) the caller
            return policy_error_decision(
                call, f"policy evaluation failed ({type(e).__name__})", self.version
            )

    def _plan(self, tool: str) -> _Plan:
        plan = self._plans.get(tool)
        if plan is None:
            c = self._c
            plan = _Plan(
                rules=[c.rules[i] for i in self._rule_index.lookup(tool)],
                blasts=[c.blasts[i] for i in self._blast_index.lookup(tool)],
                targets=[c.targets[i] for i in self._target_index.lookup(tool)],
            )
            if len(self._plans) >= _PLAN_CACHE_MAX:
                self._plans.clear()
            self._plans[tool] = plan
        return plan

    def _rewrite_or_redact(
        self,
        call: ToolCall,
        plan: _Plan,
        matched: list[CompiledRule],
        args: Mapping[str, Any],
        targets: Targets,
        radius: int,
        decision: str,
        verdict: str,
        reason: str | None,
        approval: ApprovalSettings | None,
    ) -> Decision:
        """The rest of decide() when a matched rule may redact or the winner rewrites."""
        # Redactions of every matched rule apply to what the Decision reports, whatever
        # wins: the secret must not reach the audit trail through `arguments`.
        safe: Mapping[str, Any] = args
        redactions = 0
        redactors = [
            r.rewrite.redactor for r in matched if r.rewrite is not None and r.rewrite.redactor
        ]
        scrub_text = None
        if redactors:
            # Before the copy is redacted: the free-text scrubber needs the secrets.
            scrub_text = text_redaction(redactors, args)
            copy: dict[str, Any] = copy_json(args)
            redactions = sum(red.apply(copy) for red in redactors)
            if redactions:
                safe = copy
                if plan.targets:
                    targets = _run_targets(plan.targets, call.server, safe)
        rewritten: dict[str, Any] | None = None
        if decision == REWRITE:
            try:
                rewritten = _rewrite(call, matched, safe, redactors)
            except RewriteError as e:
                # Fail closed: a rewrite that cannot be produced must not run unrewritten.
                decision, rewritten = DENY, None
                reason = f"rewrite by rule {verdict!r} failed: {e}"
        return make_decision(
            decision,
            verdict,
            tuple([r.id for r in matched]),
            self.version,
            BLAST_RADII[radius],
            targets[0],
            targets[1],
            targets[2],
            safe,
            rewritten,
            reason,
            approval,
            redactions,
            scrub_text,
        )

    def is_read(self, call: ToolCall) -> bool:
        """Known read-only for ``approve-reads``: in ``reads:`` or MCP readOnlyHint true."""
        reads = self._c.reads
        if reads is not None and reads.match(call.tool):
            return True
        return read_only_hint(call.annotations) is True

    def _base(self, call: ToolCall | None) -> tuple[str, str, str | None, ApprovalSettings | None]:
        """The base layer for a call no rule matched: (decision, verdict, reason, approval).
        ``call`` is only read by approve-reads."""
        preset = self._c.preset
        if preset is None:
            default = self._c.default or ALLOW
            reason = None if default == ALLOW else f"no rule matched; the default is {default}"
            approval = self._c.approval if default == REQUIRE_APPROVAL else None
            return default, VERDICT_PASS, reason, approval
        verdict = PRESET_VERDICT_PREFIX + preset
        if preset == "deny-all":
            return DENY, verdict, "no rule allows this call (preset deny-all)", None
        if preset == "approve-all":
            return ALLOW, verdict, None, None
        if call is not None and self.is_read(call):
            return ALLOW, verdict, None, None
        reason = "not known to be read-only (preset approve-reads)"
        return REQUIRE_APPROVAL, verdict, reason, self._c.approval

    # -- explaining --------------------------------------------------------------------

    def explain(self, call: ToolCall) -> Explanation:
        """The decision plus, per rule, whether it applied and which condition failed.
        Descriptions name conditions, never argument values (which may be secrets)."""
        decision = self.decide(call)
        args = call.arguments if isinstance(call.arguments, Mapping) else _EMPTY_ARGS
        tool = call.tool if isinstance(call.tool, str) else ""
        targets = _extract_targets(self._c.targets, call.server, args, tool)
        env = Env(call, args, targets)
        traces: list[RuleTrace] = []
        for rule in self._c.rules:
            applies = rule.cond.tools is None or bool(rule.cond.tools.match(tool))
            failed = note = None
            if not applies:
                failed = rule.cond.describe()[0]
            else:
                pred = next((p for p in rule.cond.preds if not p.test(env)), None)
                if pred is not None:
                    failed, note = pred.describe(), self._target_note(pred, env, tool)
            traces.append(
                RuleTrace(
                    rule_id=rule.id,
                    decision=rule.decision,
                    line=rule.line,
                    applies=applies,
                    matched=applies and failed is None,
                    failed=failed,
                    conditions=tuple(rule.cond.describe()),
                    note=note,
                )
            )
        sources = [
            f"blast_radius[{b.index}] ({BLAST_RADII[b.radius]})"
            for b in self._c.blasts
            if (b.cond.tools is None or b.cond.tools.match(tool)) and b.cond.matches(env)
        ]
        sources += [
            f"rule {t.rule_id!r} ({BLAST_RADII[r.radius]})"
            for t, r in zip(traces, self._c.rules, strict=True)
            if t.matched and r.radius >= 0
        ]
        base = None
        if not decision.policy_matched and decision.policy_rule != "policy-error":
            base = self._describe_base(call)
        return Explanation(decision, tuple(traces), tuple(sources), base)

    def _target_note(self, pred: Pred, env: Env, tool: str) -> str | None:
        """For a failed repo / branch / path condition with no such target: whether any
        ``targets:`` entry could give one for this call (else the rule is dead here)."""
        if not isinstance(pred, FieldGlobPred) or pred.field not in TARGET_FIELDS:
            return None
        if getattr(env, pred.field) is not None:
            return None  # a target was found; it just does not match
        server = env.server
        givers = [
            t
            for t in self._c.targets
            if getattr(t, pred.field) is not None
            and (t.tools is None or t.tools.match(tool))
            and (t.servers is None or (isinstance(server, str) and t.servers.match(server)))
        ]
        if not givers:
            return f"no `targets:` entry gives a {pred.field} for this tool, so this never holds"
        return f"no {pred.field}: the `targets:` entries for this tool found no value"

    def _describe_base(self, call: ToolCall) -> str:
        preset = self._c.preset
        if preset is None:
            return f"no rule matched: the policy default {self._c.default or ALLOW} applies"
        if preset == "approve-reads":
            kind = "read-only" if self.is_read(call) else "not known to be read-only"
            return f"no rule matched: preset approve-reads, the call is {kind}"
        return f"no rule matched: preset {preset} applies"


def _run_targets(
    steps: Sequence[_TargetStep], server: str | None, args: Mapping[str, Any]
) -> Targets:
    """The hot-path twin of _extract_targets over a plan's pre-filtered entries."""
    repo = branch = path = None
    for servers, repo_of, branch_of, path_of in steps:
        if servers is not None and not (isinstance(server, str) and servers(server)):
            continue
        if repo is None and repo_of is not None:
            repo = repo_of(args)
        if branch is None and branch_of is not None:
            branch = branch_of(args)
        if path is None and path_of is not None:
            path = path_of(args)
        if repo is not None and branch is not None and path is not None:
            break
    return (repo, branch, path)


def _extract_targets(
    targets: Sequence[CompiledTarget], server: str | None, args: Mapping[str, Any], tool: str
) -> Targets:
    """repo / branch / path: per field, the first entry (file order) whose selectors match
    and whose template resolves."""
    found: list[str | None] = [None, None, None]
    for target in targets:
        if target.tools is not None and not target.tools.match(tool):
            continue
        if target.servers is not None and not (
            isinstance(server, str) and target.servers.match(server)
        ):
            continue
        templates: tuple[TargetTemplate | None, ...] = (target.repo, target.branch, target.path)
        for i, template in enumerate(templates):
            if found[i] is None and template is not None:
                found[i] = template.render(args)
        if None not in found:
            break
    return (found[0], found[1], found[2])


def _rewrite(
    call: ToolCall,
    matched: Sequence[CompiledRule],
    safe: Mapping[str, Any],
    redactors: Sequence[Redactor],
) -> dict[str, Any]:
    """Every matched REWRITE rule's rewrite, in file order, on a copy of the (redacted)
    arguments; then the redactions again, so nothing set can reintroduce a secret."""
    out: dict[str, Any] = copy_json(safe)
    scrub: Callable[[Any], Any] | None = None
    regex_redactors = [red for red in redactors if red.regexes]
    if regex_redactors:

        def scrub(value: Any) -> Any:
            for red in regex_redactors:
                value = red.scrub_value(value)
            return value

    for rule in matched:
        if rule.decision == REWRITE and rule.rewrite is not None:
            rule.rewrite.apply(call, safe, out, scrub)
    for red in redactors:
        red.redact_keys(out)
    return out
