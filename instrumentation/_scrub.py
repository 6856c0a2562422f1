"""Credential scrubbing where values enter the tool span.

The span is the record every exporter on the provider receives: the tooltrail exporter,
and any other the application added (an OTLP fan-out, Phoenix, Langfuse). So what a span
records is scrubbed as it is set, never later: arguments, rewritten arguments, the result
preview, status and exception messages, targets, session and agent fields. The policy and
the tool still see the caller's real values; only the record is scrubbed.

Values are scrubbed to a fixed point (``tooltrail.redact.scrub_stable``), so the
exporter's own pass at landing finds nothing more: the redactions are counted once, here,
in ``tooltrail.redactions``. Values under a credential-named key (``{"token": "abc"}``)
have no shape the scrubber knows elsewhere, so they are kept (``Scrub.erase``) and erased
from every later text of the same call that quotes them (a result, an error message).

Speed: clean values cost one pre-check (``Redactor.maybe_sensitive``) over all the texts
of a span start joined together; only a span that may hold a secret is walked.

Logs are records too: every record of a ``tooltrail`` logger (``tooltrail.*``, whichever
module made it) is scrubbed as it is made (``tooltrail.logscrub``, installed on ``import
tooltrail`` in every process), before any handler
of the host's sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from tooltrail.redact import REDACTED_TEMPLATE, Redactor, scrub_stable
from tooltrail.semconv import (
    GEN_AI_AGENT_ID,
    GEN_AI_AGENT_NAME,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_OPERATION_NAME,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    MCP_METHOD_NAME,
    SESSION_ID,
    TT_ARGUMENTS_REWRITTEN,
    TT_BLAST_RADIUS,
    TT_DECISION,
    TT_PARENT_SESSION_ID,
    TT_POLICY_RULE,
    TT_POLICY_VERSION,
    TT_SESSION_ID,
    TT_TOOL_ANNOTATIONS,
    TT_TRIGGER,
)

if TYPE_CHECKING:
    from tooltrail.policy import TextRedaction

_log = logging.getLogger("tooltrail.instrumentation")

# Attributes whose values tooltrail chooses from a fixed vocabulary or the operator's policy
# file (no caller's value ever reaches them). Left out of the pre-check: "High" holds "gh",
# a GitHub-token marker, and probing it would walk every high-radius span for nothing.
_VOCABULARY: Final = frozenset(
    {
        GEN_AI_OPERATION_NAME,
        MCP_METHOD_NAME,
        TT_DECISION,
        TT_POLICY_RULE,
        TT_POLICY_VERSION,
        TT_BLAST_RADIUS,
    }
)
# The session's attributes: the same for every call of a session, so checked once per
# session (``_clean_sessions``), not once per call.
_SESSION: Final = frozenset(
    {
        SESSION_ID,
        GEN_AI_CONVERSATION_ID,
        TT_SESSION_ID,
        GEN_AI_AGENT_NAME,
        GEN_AI_AGENT_ID,
        TT_PARENT_SESSION_ID,
        TT_TRIGGER,
    }
)
_NOT_PER_CALL: Final = _VOCABULARY | _SESSION
# Sessions whose attributes hold nothing to scrub, each with the redactor that said so
# (session id, agent name, agent id, parent session id, trigger).
SessionFields = tuple[str, str | None, str | None, str | None, str | None]
_clean_sessions: dict[SessionFields, Redactor] = {}
_CLEAN_SESSIONS_MAX: Final = 4096
# JSON documents among the attributes: walked as JSON (key names count too).
# What a value that could not be scrubbed is recorded as: fail closed, never the raw value.
UNSCRUBBABLE: Final = REDACTED_TEMPLATE.format("unscrubbable")

Encode = Callable[[Any], str]


class Scrub:
    """One call's scrubbing: the redactor (None: ``TOOLTRAIL_REDACT`` is off) and the
    values to erase from the call's later texts (None: there are none)."""

    __slots__ = ("erase", "redactor")

    def __init__(self, redactor: Redactor | None, erase: TextRedaction | None = None) -> None:
        self.redactor = redactor
        self.erase = erase

    def text(self, value: str) -> tuple[str, int]:
        """``value`` scrubbed (shapes, then the call's credential values); the count."""
        count = 0
        red = self.redactor
        try:
            if red is not None and red.maybe_sensitive(value):
                value, count = scrub_stable(red.scrub_text, value)
            if self.erase is not None:
                value, n = self.erase.scrub(value)
                count += n
        except Exception:  # e.g. RecursionError on pathological input: never the raw value
            _log.exception("tooltrail: a span value could not be scrubbed; recording a marker")
            return UNSCRUBBABLE, 1
        return value, count

    def document(self, text: str) -> tuple[str, int]:
        """A text that may be a whole JSON document (a result): key names count too."""
        red = self.redactor
        if red is None or text[:1] not in ("{", "[") or not red.maybe_sensitive(text):
            return self.text(text)
        try:
            scrubbed, count = scrub_stable(red.scrub_json, text)
        except Exception:
            _log.exception("tooltrail: a span value could not be scrubbed; recording a marker")
            return UNSCRUBBABLE, 1
        if self.erase is not None:
            scrubbed, n = self.erase.scrub(scrubbed)
            count += n
        return scrubbed, count


def scrub_start(
    redactor: Redactor,
    attrs: dict[str, Any],
    arguments: Any,
    rewritten: Any,
    encode: Encode,
    session: SessionFields,
) -> tuple[Scrub, int]:
    """Scrub, in place, the attributes a span starts with; returns the call's ``Scrub``
    and how many values were removed.

    ``arguments`` / ``rewritten``: the objects the JSON attributes were encoded from,
    walked as objects so that a value ``encode`` cut to fit is scrubbed whole first.
    ``session``: the session's fields, checked once per session."""
    if _clean_sessions.get(session) is redactor:
        skip = _NOT_PER_CALL
    elif redactor.maybe_sensitive("\x00".join(v for v in session if v)):
        skip = _VOCABULARY
    else:
        if len(_clean_sessions) >= _CLEAN_SESSIONS_MAX:
            _clean_sessions.clear()
        _clean_sessions[session] = redactor
        skip = _NOT_PER_CALL
    probe = "\x00".join([v for k, v in attrs.items() if k not in skip and type(v) is str])
    if not redactor.maybe_sensitive(probe):
        return clean_scrub(redactor), 0  # the usual case: nothing to do
    documents = {GEN_AI_TOOL_CALL_ARGUMENTS: arguments, TT_ARGUMENTS_REWRITTEN: rewritten}
    secrets: list[Any] = []
    total = 0
    for key, obj in documents.items():
        text = attrs.get(key)
        if type(text) is str and redactor.maybe_sensitive(text):
            new, n, found = _document(redactor, obj, encode)
            secrets.extend(found)
            if n:
                attrs[key] = new
                total += n
    scrub = Scrub(redactor, _eraser(secrets))
    for key, value in attrs.items():
        if type(value) is not str or key in _VOCABULARY or key in documents:
            continue
        if key == TT_TOOL_ANNOTATIONS:
            new, n = scrub.document(value)
        else:
            new, n = scrub.text(value)
        if n:
            attrs[key] = new
            total += n
    return scrub, total


def clean_scrub(redactor: Redactor | None) -> Scrub:
    """The ``Scrub`` of calls that quote no credential-named value: shared (it never
    changes), so a clean call allocates none. One slot: a process has one redactor."""
    global _clean
    if redactor is None:
        return _NO_REDACTOR
    found = _clean
    if found.redactor is not redactor:
        found = _clean = Scrub(redactor)
    return found


def _document(redactor: Redactor, obj: Any, encode: Encode) -> tuple[str, int, list[Any]]:
    try:
        secrets = redactor.secret_values(obj)
        scrubbed, count = scrub_stable(redactor.scrub_obj, obj)
    except Exception:
        _log.exception("tooltrail: arguments could not be scrubbed; recording a marker")
        return encode(UNSCRUBBABLE), 1, []
    return (encode(scrubbed) if count else ""), count, secrets


def _eraser(secrets: list[Any]) -> TextRedaction | None:
    if not secrets:
        return None
    from tooltrail.policy.model import TextRedaction  # only calls quoting a secret key

    return TextRedaction.of(secrets, [])


_NO_REDACTOR: Final = Scrub(None)
_clean = _NO_REDACTOR


__all__ = [
    "UNSCRUBBABLE",
    "Scrub",
    "clean_scrub",
    "scrub_start",
]
