"""Sessions: which agent run a tool call belongs to, and its place in that run.

``session(...)`` opens a session for the code inside it; the current one lives in a
``ContextVar``, so it follows asyncio tasks (each task copies the context it was created
in) and threads started with a copied context (``contextvars.copy_context().run``,
``asyncio.to_thread``). The ``sequence`` counter belongs to the session object, not to
the context, so every task and thread of one session draws from one counter, under a lock.
The counter is kept per session *id* for the process: a session id opened again (a second
``session(session_id=X)``, the implicit session rebuilt by ``configure``) goes on counting
where it stopped, so ``sequence`` never repeats within one process.

With no session open, calls belong to the process's implicit session: its id comes from
``$TOOLTRAIL_SESSION_ID`` (else a fresh id per process) and its agent name from
``configure(agent_name=...)`` or ``$TOOLTRAIL_AGENT_NAME``. So a zero-code agent run is one
session.
"""

from __future__ import annotations

import contextvars
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

from tooltrail.config import ENV_AGENT_NAME, ENV_SESSION_ID
from tooltrail.errors import BadInputError
from tooltrail.semconv import (
    GEN_AI_AGENT_ID,
    GEN_AI_AGENT_NAME,
    GEN_AI_CONVERSATION_ID,
    SESSION_ID,
    TRIGGERS,
    TT_PARENT_SESSION_ID,
    TT_SESSION_ID,
    TT_TAGS,
    TT_TRIGGER,
)

# A sub-agent's session is started by another agent unless the caller says otherwise.
NESTED_TRIGGER: Final = "agent"
# Session ids whose counters the process keeps; the least recently opened goes first. Past
# it, an id not opened for that many sessions starts again at 1: bounded memory for agents
# that open a session per request for months (a counter is one small list).
MAX_COUNTED_SESSIONS: Final = 65_536

# One lock for every counter: a lock per session id cost ~300 bytes each.
_counters: OrderedDict[str, list[int]] = OrderedDict()
_counters_lock = threading.Lock()


def _counter_for(session_id: str) -> list[int]:
    """The counter cell (``[last number]``) of ``session_id``, shared by every ``Session``
    object that carries the id."""
    with _counters_lock:
        counter = _counters.get(session_id)
        if counter is None:
            counter = _counters[session_id] = [0]
            if len(_counters) > MAX_COUNTED_SESSIONS:
                _counters.popitem(last=False)
        else:
            _counters.move_to_end(session_id)
        return counter


class Session:
    """One agent run. Immutable identity plus a thread-safe action counter.

    ``tags``: labels stamped on the session's tool spans and its end record.
    ``records_end``: its producer records the end (``session(...)``, the gateway).
    ``output``: the session's final output, recorded with its end (``set_output``).
    """

    __slots__ = (
        "_counter",
        "agent_id",
        "agent_name",
        "output",
        "parent_session_id",
        "records_end",
        "session_id",
        "tags",
        "trigger",
    )

    def __init__(
        self,
        session_id: str,
        agent_name: str | None = None,
        agent_id: str | None = None,
        parent_session_id: str | None = None,
        trigger: str | None = None,
        tags: Iterable[str] = (),
        records_end: bool = False,
    ) -> None:
        self.session_id = session_id
        self.agent_name = agent_name
        self.agent_id = agent_id
        self.parent_session_id = parent_session_id
        self.trigger = trigger
        self.tags: tuple[str, ...] = check_tags(tags)
        self.records_end = records_end
        self.output: str | None = None
        self._counter = _counter_for(session_id)

    def set_output(self, output: str) -> None:
        """The session's final output (an answer, a summary), recorded with its end."""
        self.output = str(output)

    def next_sequence(self) -> int:
        """The next action number (1, 2, ...) of this session id, unique within the process
        across threads and across every ``Session`` object carrying the id."""
        counter = self._counter
        with _counters_lock:
            n = counter[0] + 1
            counter[0] = n
        return n

    def add_identity(self, attrs: dict[str, Any]) -> None:
        """Add the session's identity (ids, agent, parent, trigger, tags) to span attributes:
        one definition for the tool spans and the session's end record."""
        session_id = self.session_id
        attrs[SESSION_ID] = session_id
        attrs[GEN_AI_CONVERSATION_ID] = session_id
        attrs[TT_SESSION_ID] = session_id
        if self.agent_name is not None:
            attrs[GEN_AI_AGENT_NAME] = self.agent_name
        if self.agent_id is not None:
            attrs[GEN_AI_AGENT_ID] = self.agent_id
        if self.parent_session_id is not None:
            attrs[TT_PARENT_SESSION_ID] = self.parent_session_id
        if self.trigger is not None:
            attrs[TT_TRIGGER] = self.trigger
        if self.tags:
            attrs[TT_TAGS] = list(self.tags)

    def __repr__(self) -> str:
        return (
            f"Session(session_id={self.session_id!r}, agent_name={self.agent_name!r}, "
            f"parent_session_id={self.parent_session_id!r}, trigger={self.trigger!r})"
        )


_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "tooltrail_session", default=None
)
_implicit: Session | None = None
_implicit_lock = threading.Lock()
_default_agent_name: str | None = None


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """``tags`` as a sorted tuple without repeats; each must be a non-empty string."""
    if isinstance(tags, str):
        raise BadInputError(f"session(tags={tags!r}): tags must be a list of strings")
    out = set()
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise BadInputError(f"session(tags=...): {tag!r} is not a non-empty string")
        out.add(tag.strip())
    return tuple(sorted(out))


def new_session_id() -> str:
    return uuid.uuid4().hex


def set_default_agent_name(name: str | None) -> None:
    """The agent name of sessions that name none (set by ``configure(agent_name=...)``)."""
    global _default_agent_name, _implicit
    _default_agent_name = name
    with _implicit_lock:
        # The implicit session is rebuilt on next use so it carries the new name.
        _implicit = None


def default_agent_name() -> str | None:
    return _default_agent_name or os.environ.get(ENV_AGENT_NAME) or None


def current_session() -> Session:
    """The session open in this context, else the process's implicit session."""
    s = _current.get()
    if s is not None:
        return s
    return _implicit_session()


def open_session() -> Session | None:
    """The session explicitly opened in this context, or None."""
    return _current.get()


def _implicit_session() -> Session:
    global _implicit
    s = _implicit
    if s is not None:
        return s
    with _implicit_lock:
        if _implicit is None:
            _implicit = Session(
                session_id=os.environ.get(ENV_SESSION_ID) or new_session_id(),
                agent_name=default_agent_name(),
            )
        return _implicit


def _reset_implicit_after_fork() -> None:
    # A forked child is a different run: a new implicit session (and id, unless the env
    # fixes it). Counters carry on, so a session open across the fork and the same id
    # reopened in the child never repeat a number. Locks held by other threads at the
    # fork would never be released here: both are new.
    global _implicit, _implicit_lock, _counters_lock
    _implicit = None
    _implicit_lock = threading.Lock()
    _counters_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_implicit_after_fork)


class _Scope:
    """Makes ``session`` current for the code inside ``with`` (re-entrant: each entry is
    undone by its own exit)."""

    __slots__ = ("_tokens", "session")

    def __init__(self, s: Session) -> None:
        self.session = s
        self._tokens: list[contextvars.Token[Session | None]] = []

    def __enter__(self) -> Session:
        self._tokens.append(_current.set(self.session))
        return self.session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tokens:
            _current.reset(self._tokens.pop())


class session(_Scope):  # lower-case: used as a context manager, like contextlib's helpers
    """Open a session for the code inside ``with``; every tool span inside is stamped.

    Args:
        session_id: the id to use; a fresh one when None. The enclosing session's own id
            resumes it: parent, trigger, agent name and id are then the enclosing
            session's unless given (a session is never its own parent).
        agent_name: the agent's name; default the enclosing session's, else the configured
            / ``$TOOLTRAIL_AGENT_NAME`` name.
        parent_session_id: the session that started this one; default the enclosing
            session (sub-agents), else none.
        trigger: what started the run: one of manual, api, schedule, event, agent
            (default ``agent`` inside another session, else none).
        agent_id: the agent's id (``gen_ai.agent.id``), when it has one.
        tags: labels for the session (``tooltrail.tags``), listed and filtered on; the
            enclosing session's tags too when it is resumed by its own id.

    Leaving the ``with`` block records the session's end (``completed``, or ``failed``
    when the block raised); resuming the enclosing session by its own id records none
    (the enclosing block's exit does). ``Session.set_output`` gives the final output.

    Raises:
        BadInputError: ``trigger`` is not one of the known triggers, or a tag is not a
            non-empty string.

    Example::

        with tt.session(agent_name="release-bot", tags=["nightly"]) as s:
            s.set_output(run_agent())
    """

    __slots__ = ("_resumed",)

    def __init__(
        self,
        session_id: str | None = None,
        agent_name: str | None = None,
        parent_session_id: str | None = None,
        trigger: str | None = None,
        agent_id: str | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        if trigger is not None and trigger not in TRIGGERS:
            raise BadInputError(
                f"session(trigger={trigger!r}): trigger must be one of {', '.join(TRIGGERS)}"
            )
        tags = check_tags(tags)
        enclosing = _current.get()
        self._resumed = False
        if enclosing is not None:
            agent_name = agent_name or enclosing.agent_name
            if session_id == enclosing.session_id:
                # The enclosing session resumed by its own id: the same run, not a sub-agent.
                self._resumed = True
                parent_session_id = parent_session_id or enclosing.parent_session_id
                agent_id = agent_id or enclosing.agent_id
                trigger = trigger or enclosing.trigger
                tags = check_tags((*tags, *enclosing.tags))
            else:
                parent_session_id = parent_session_id or enclosing.session_id
                trigger = trigger or NESTED_TRIGGER
        session_id = session_id or new_session_id()
        if parent_session_id == session_id:
            parent_session_id = None  # a session is never its own parent
        super().__init__(
            Session(
                session_id=session_id,
                agent_name=agent_name or default_agent_name(),
                agent_id=agent_id,
                parent_session_id=parent_session_id,
                trigger=trigger,
                tags=tags,
                records_end=True,
            )
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if self._tokens or self._resumed:
            return  # an inner entry of a re-entered scope, or the enclosing run resumed
        # Imported here: _session_end needs the settings, which import this module.
        from tooltrail.instrumentation._session_end import record_end

        record_end(self.session, exc_type=exc_type)

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class use_session(_Scope):  # lower-case: a context manager
    """Continue an existing session in another context, typically a worker thread.

    Plain ``threading.Thread`` and ``ThreadPoolExecutor`` workers do not inherit the
    caller's context, so pass the ``Session`` along and enter it there; its sequence
    counter is shared, so numbers stay unique and ordered across threads.
    """

    __slots__ = ()
