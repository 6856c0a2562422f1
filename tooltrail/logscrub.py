"""Log records of tooltrail's loggers are scrubbed as they are made, in every process.

Messages and tracebacks can quote an error that quotes a tool call's arguments (a broker or
the policy failing on them), and logs are written somewhere too. Importing ``tooltrail``
calls :func:`install_log_scrubbing`, so agents, the collector and its landing workers, the
CLI and the dashboard all scrub ``tooltrail.*`` records before any handler sees them. The
scrubber itself is loaded on the first tooltrail record, so ``import tooltrail`` stays
cheap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from tooltrail.redact import Redactor

# What a record that cannot be scrubbed says instead (REDACTED_TEMPLATE's form).
UNSCRUBBABLE: Final = "[REDACTED:unscrubbable]"
# Set on a record once scrubbed, so a second guard does not walk it again.
_SCRUBBED: Final = "tooltrail_scrubbed"


class LogScrubber(logging.Filter):
    """Scrubs log records. As a filter it is one logger's only (Python applies no logger
    filter to records that propagate from child loggers), which is why
    :func:`install_log_scrubbing` applies it to every tooltrail record as it is made."""

    def __init__(self) -> None:
        super().__init__()
        self._redactor: Redactor | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SCRUBBED, False):
            return True
        setattr(record, _SCRUBBED, True)
        try:
            red = self._redactor
            if red is None:
                from tooltrail.redact import Redactor

                red = self._redactor = Redactor.from_env()
            if red.enabled:
                _scrub_record(red, record)
        except Exception:  # a record that cannot be scrubbed is still not shown raw
            record.msg, record.args, record.exc_info, record.exc_text = UNSCRUBBABLE, (), None, None
        return True


def _scrub_record(red: Redactor, record: logging.LogRecord) -> None:
    from tooltrail.redact import scrub_stable

    message = record.getMessage()
    if red.maybe_sensitive(message):
        scrubbed, n = scrub_stable(red.scrub_text, message)
        if n:
            record.msg, record.args = scrubbed, ()
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        if red.maybe_sensitive(text):
            text, n = scrub_stable(red.scrub_text, text)
            if n:
                # The exception itself still quotes the secret: handlers that format it
                # again (JSON formatters, OTel's LoggingHandler) get the scrubbed text only.
                record.exc_info = None
        record.exc_text = text


def _is_tooltrail(name: str) -> bool:
    return name == "tooltrail" or name.startswith("tooltrail.")


class _ScrubbingRecordFactory:
    """The process's log-record factory, wrapped: records of tooltrail's loggers come out
    scrubbed, whatever the logger, before any handler or filter of the host's sees them.
    Others' records are untouched."""

    def __init__(self, inner: Callable[..., logging.LogRecord]) -> None:
        self.inner = inner
        self._scrubber = LogScrubber()
        self._busy = threading.local()  # scrubbing may log: no scrubbing of those records

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        if _is_tooltrail(record.name) and not getattr(self._busy, "on", False):
            self._busy.on = True
            try:
                self._scrubber.filter(record)
            finally:
                self._busy.on = False
        return record


_installed: _ScrubbingRecordFactory | None = None
_install_lock = threading.Lock()


def install_log_scrubbing() -> None:
    """Scrub every ``tooltrail.*`` log record as it is made. The factory in place is
    wrapped, not replaced, so one the host installed keeps working; one the host installs
    later wraps ours in turn, as record factories do."""
    global _installed
    with _install_lock:
        current = logging.getLogRecordFactory()
        if _installed is not None and current is _installed:
            return
        _installed = _ScrubbingRecordFactory(current)
        logging.setLogRecordFactory(_installed)


__all__ = ["UNSCRUBBABLE", "LogScrubber", "install_log_scrubbing"]
