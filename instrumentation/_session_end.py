"""The session-end record: one ``tooltrail.session.end`` span per ended session.

Why a span and not a control-store event: a span lands through every path a tool span
does (the in-process exporter, ``tooltrail collect`` over OTLP, ``tooltrail ingest``),
is scrubbed by the same normalizer, and sits in the same Parquet files and views as the
actions it closes, so a session's status can be computed from its landed spans alone,
wherever they landed (docs/ARCHITECTURE.md, "Session end"). The control store is local
to one data directory and is not what a remote agent's collector receives.

Recording an end never breaks the host: any failure is logged, not raised.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from opentelemetry.trace import SpanKind, Status, StatusCode

from tooltrail.instrumentation._session import Session
from tooltrail.instrumentation._shorten import RESULT_PREVIEW_CHARS
from tooltrail.semconv import (
    SESSION_END_NAME,
    TRUNCATION_MARK,
    TT_SESSION_END_REASON,
    TT_SESSION_END_SOURCE,
    TT_SESSION_OUTCOME,
    TT_SESSION_OUTPUT,
)

_log = logging.getLogger("tooltrail.instrumentation")

COMPLETED: Final = "completed"
FAILED: Final = "failed"
# Who recorded the end (`tooltrail.session.end_source`).
SOURCE_SESSION: Final = "session"
SOURCE_GATEWAY: Final = "gateway"
# The final output is kept like a tool result preview: long enough to read, bounded.
OUTPUT_CHARS: Final = RESULT_PREVIEW_CHARS * 4


def record_end(
    sess: Session,
    *,
    exc_type: type[BaseException] | None = None,
    source: str = SOURCE_SESSION,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Record that ``sess`` ended: ``failed`` when ``exc_type`` is given, else
    ``completed``. Never raises."""
    try:
        _record(sess, exc_type, source, reason, extra)
    except Exception:  # tracing must not break the host
        _log.exception("tooltrail: recording the end of session %s failed", sess.session_id)


def _record(
    sess: Session,
    exc_type: type[BaseException] | None,
    source: str,
    reason: str | None,
    extra: dict[str, Any] | None,
) -> None:
    # Imported here: the settings import this package's session module.
    from tooltrail.instrumentation._settings import settings

    outcome = FAILED if exc_type is not None else COMPLETED
    if reason is None and exc_type is not None:
        reason = f"the session's code raised {exc_type.__name__}"
    attrs: dict[str, Any] = {TT_SESSION_OUTCOME: outcome, TT_SESSION_END_SOURCE: source}
    sess.add_identity(attrs)
    if reason:
        attrs[TT_SESSION_END_REASON] = reason
    if exc_type is not None:
        attrs["error.type"] = exc_type.__name__
    if sess.output is not None:
        output = sess.output
        if len(output) > OUTPUT_CHARS:
            output = output[: OUTPUT_CHARS - len(TRUNCATION_MARK)] + TRUNCATION_MARK
        attrs[TT_SESSION_OUTPUT] = output
    if extra:
        attrs.update(extra)
    st = settings()
    if st.redactor is not None:
        # As a tool span's attributes are: scrubbed as they enter the span, since an OTLP
        # exporter may send them elsewhere before tooltrail's normalizer sees them.
        attrs = {k: _scrubbed(st.redactor, v) for k, v in attrs.items()}
    span = st.tool_tracer.start_span(SESSION_END_NAME, kind=SpanKind.INTERNAL, attributes=attrs)
    if exc_type is not None:
        span.set_status(Status(StatusCode.ERROR, exc_type.__name__))
    else:
        span.set_status(Status(StatusCode.OK))
    span.end()


def _scrubbed(redactor: Any, value: Any) -> Any:
    if isinstance(value, str):
        return redactor.scrub_text(value)[0]
    if isinstance(value, list):
        return [redactor.scrub_text(v)[0] if isinstance(v, str) else v for v in value]
    return value
