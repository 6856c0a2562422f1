"""The policy engine's value types: what goes in (``ToolCall``) and what comes out
(``Decision``, ``ApprovalSettings``), plus the fail-closed ``policy_error_decision``.

These are the types other parts code against (see docs/POLICY.md, "Python API"); they carry
no behaviour beyond (de)serialisation so that the instrumentation can import them cheaply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

from tooltrail.policy.regex import TextPattern
from tooltrail.semconv import BLAST_RADII as BLAST_RADII  # re-exported for the engine
from tooltrail.semconv import DECISIONS, TRUNCATION_MARK

ALLOW, DENY, REWRITE, REQUIRE_APPROVAL = DECISIONS

# Strictness, weakest first: the strictest matching rule wins (SPEC §4). Keys are in the
# order of DECISIONS.
STRICTNESS: Final[Mapping[str, int]] = {ALLOW: 0, DENY: 3, REWRITE: 1, REQUIRE_APPROVAL: 2}

VERDICT_PASS: Final = "pass"
"""Verdict when no rule matched and the policy's ``default`` decided."""
VERDICT_POLICY_ERROR: Final = "policy-error"
"""Verdict when the policy could not load or could not evaluate a call (fail closed)."""
PRESET_VERDICT_PREFIX: Final = "preset:"
"""Verdict prefix when no rule matched and a preset decided, e.g. ``preset:deny-all``."""

ANNOTATION_HINTS: Final = (
    ("readOnlyHint", "read_only_hint"),
    ("destructiveHint", "destructive_hint"),
    ("idempotentHint", "idempotent_hint"),
    ("openWorldHint", "open_world_hint"),
)
"""The MCP ToolAnnotations hints, camelCase (the wire) and snake_case (the Python model)
spellings; each is a boolean, or null / absent for the MCP default."""

REDACTED: Final = "[REDACTED]"
DEFAULT_RADIUS: Final = "Low"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as the engine sees it. ``annotations`` are the MCP ToolAnnotations
    (``readOnlyHint``, ``destructiveHint``…, camelCase or snake_case) when known."""

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    agent: str | None = None
    session_id: str | None = None
    server: str | None = None
    annotations: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """How a REQUIRE_APPROVAL call is held: for how long, what happens on timeout, who may
    decide (``("*",)`` = anyone)."""

    timeout_s: float
    on_timeout: str
    approvers: tuple[str, ...]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "timeout_s": self.timeout_s,
            "on_timeout": self.on_timeout,
            "approvers": list(self.approvers),
        }


# What a result preview or message ends with when it was cut (the normalizer's "…" and the
# instrumentation's "…[truncated]" both start with it).
_CUT_MARK: Final = "…"
# The rest of a token after a known prefix: up to a space, quote or separator.
_TOKEN_REST: Final = r"[^\s\"'<>,;]*"
# A cut value shorter than this is not looked for (it would match too much).
_MIN_CUT_PREFIX: Final = 8
# The shortest tail before a preview's cut mark taken for the start of a redacted value.
_MIN_CUT_TAIL: Final = 4
_CUT_MARK_WINDOW: Final = len("…[truncated]")


class TextRedaction:
    """The free-text side of a decision's redactions: what must not appear in a result
    preview, an error message or an action summary either.

    ``values`` are the texts of the argument values a key path redacted (strings as they
    are and JSON-escaped, numbers in decimal, the leaves of objects and lists): every
    occurrence is replaced. ``regexes`` are the rules' ``{regex: …}`` redactions, applied
    as to argument strings. One instance serves the exporter (``apply_to_row``) and the
    instrumentation (enforced mode), so both scrub alike.
    """

    __slots__ = ("regexes", "values")

    def __init__(self, values: Iterable[str], regexes: Sequence[TextPattern]) -> None:
        # Longest first: a value containing another is replaced whole, not around it.
        self.values: tuple[str, ...] = tuple(sorted({v for v in values if v}, key=len)[::-1])
        self.regexes: tuple[TextPattern, ...] = tuple(regexes)

    def __bool__(self) -> bool:
        return bool(self.values or self.regexes)

    def __repr__(self) -> str:  # never show the secrets themselves
        return f"TextRedaction({len(self.values)} values, {len(self.regexes)} regexes)"

    def scrub(self, text: str) -> tuple[str, int]:
        """``text`` with every redacted value and regex match replaced by ``[REDACTED]``,
        and how many replacements were made."""
        count = 0
        for value in self.values:
            n = text.count(value)
            if n:
                text = text.replace(value, REDACTED)
                count += n
        if self.values and _CUT_MARK in text[-_CUT_MARK_WINDOW:]:
            text, n = self._scrub_cut_tail(text)
            count += n
        for rx in self.regexes:
            text, n = rx.subn(REDACTED, text)
            count += n
        return text, count

    def _scrub_cut_tail(self, text: str) -> tuple[str, int]:
        """A preview cut inside a secret ends with the secret's first characters: fail
        closed and redact a tail that starts a redacted value, right before the cut mark."""
        cut = text.rindex(_CUT_MARK)
        body = text[:cut]
        for value in self.values:
            # At least a few characters: a cut preview ending in one character that some
            # secret starts with is not a secret cut short.
            for k in range(min(len(value) - 1, len(body)), _MIN_CUT_TAIL - 1, -1):
                if body.endswith(value[:k]):
                    return body[:-k] + REDACTED + text[cut:], 1
        return text, 0

    @classmethod
    def of(cls, values: Iterable[Any], regexes: Sequence[TextPattern]) -> TextRedaction | None:
        """From the original (unredacted) values the key paths designate; None when there
        is nothing to scrub."""
        texts: list[str] = []
        prefixes: list[str] = []
        for value in values:
            _value_texts(value, texts, prefixes)
        # A value the instrumentation cut to fit the record is only its first characters
        # there; the result quotes it whole: redact the prefix and the rest of its token.
        cut = [re.compile(re.escape(p) + _TOKEN_REST) for p in prefixes]
        made = cls(texts, [*regexes, *cut])
        return made if made else None


def _spellings(text: str) -> tuple[str, ...]:
    """``text`` as it is and, when that differs, as it appears inside a JSON result."""
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]
    return (text,) if escaped == text else (text, escaped)


def _value_texts(value: Any, out: list[str], prefixes: list[str]) -> None:
    """The texts a redacted value can appear as in free text (``prefixes``: values cut to
    fit the record, known by their first characters only)."""
    if isinstance(value, str):
        if value.endswith(TRUNCATION_MARK):
            prefix = value[: -len(TRUNCATION_MARK)]
            if len(prefix) >= _MIN_CUT_PREFIX:
                prefixes.extend(_spellings(prefix))
                return
        out.extend(_spellings(value))
    elif isinstance(value, bool) or value is None:
        return  # true / false / null reveal nothing worth erasing from every text
    elif isinstance(value, int | float):
        out.append(str(value))
    elif isinstance(value, Mapping):
        for item in value.values():
            _value_texts(item, out, prefixes)
    elif isinstance(value, list | tuple):
        for item in value:
            _value_texts(item, out, prefixes)


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer for one call.

    ``arguments`` are the call's arguments *after redaction*: when any matched rule redacts,
    the secret is replaced here too (whatever the winning decision), so callers must record
    ``arguments`` (never their own copy) and forward ``arguments_rewritten`` to the tool
    when ``decision == "REWRITE"``. ``redactions`` counts the argument values redacted.
    ``text_redaction`` (None when no matched rule redacts) scrubs the same secrets from
    free text the call produces: use ``redact_text`` on a result preview or error message.
    """

    decision: str
    policy_rule: str
    policy_matched: tuple[str, ...]
    policy_version: str
    blast_radius: str
    target_repo: str | None
    target_branch: str | None
    target_path: str | None
    arguments: Mapping[str, Any]
    arguments_rewritten: Mapping[str, Any] | None
    reason: str | None
    approval: ApprovalSettings | None
    redactions: int = 0
    text_redaction: TextRedaction | None = field(default=None, compare=False, repr=False)

    def redact_text(self, text: str) -> tuple[str, int]:
        """``text`` with this decision's redactions applied, and the replacements made."""
        redaction = self.text_redaction
        if redaction is None:
            return text, 0
        return redaction.scrub(text)

    def to_json_dict(self) -> dict[str, Any]:
        """Exactly the SPEC §5 ``policy explain --format json`` object."""
        return {
            "decision": self.decision,
            "policy_rule": self.policy_rule,
            "policy_matched": list(self.policy_matched),
            "blast_radius": self.blast_radius,
            "target_repo": self.target_repo,
            "target_branch": self.target_branch,
            "arguments": plain(self.arguments),
            "arguments_rewritten": (
                None if self.arguments_rewritten is None else plain(self.arguments_rewritten)
            ),
            "reason": self.reason,
        }


def _decision_constructor() -> Callable[..., Decision]:
    """A constructor for Decision about twice as fast as the frozen dataclass ``__init__``
    (which calls ``object.__setattr__`` per field): the engine builds one per call."""
    setters = tuple(Decision.__dict__[f.name].__set__ for f in fields(Decision))
    if len(setters) != 14:  # keep in step with make_decision's parameters
        raise RuntimeError("Decision fields changed; update make_decision")
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13 = setters
    new = object.__new__

    def make_decision(
        decision: str,
        policy_rule: str,
        policy_matched: tuple[str, ...],
        policy_version: str,
        blast_radius: str,
        target_repo: str | None,
        target_branch: str | None,
        target_path: str | None,
        arguments: Mapping[str, Any],
        arguments_rewritten: Mapping[str, Any] | None,
        reason: str | None,
        approval: ApprovalSettings | None,
        redactions: int,
        text_redaction: TextRedaction | None = None,
    ) -> Decision:
        d = new(Decision)
        s0(d, decision)
        s1(d, policy_rule)
        s2(d, policy_matched)
        s3(d, policy_version)
        s4(d, blast_radius)
        s5(d, target_repo)
        s6(d, target_branch)
        s7(d, target_path)
        s8(d, arguments)
        s9(d, arguments_rewritten)
        s10(d, reason)
        s11(d, approval)
        s12(d, redactions)
        s13(d, text_redaction)
        return d

    return make_decision


make_decision = _decision_constructor()
"""``make_decision(...)`` takes every Decision field positionally, in declaration order."""


def plain(value: Any) -> Any:
    """A JSON-shaped deep copy: Mappings become dicts, tuples/lists become lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def policy_error_decision(call: ToolCall, reason: str, policy_version: str = "") -> Decision:
    """The fail-closed decision for a call that no policy could decide: DENY with verdict
    ``policy-error`` and blast radius Low (nothing was evaluated to rate it)."""
    arguments = call.arguments if isinstance(call.arguments, Mapping) else {}
    return Decision(
        decision=DENY,
        policy_rule=VERDICT_POLICY_ERROR,
        policy_matched=(),
        policy_version=policy_version,
        blast_radius=DEFAULT_RADIUS,
        target_repo=None,
        target_branch=None,
        target_path=None,
        arguments=arguments,
        arguments_rewritten=None,
        reason=reason,
        approval=None,
    )
