"""What the collector's route mixins use from its request handler: the ``HandlerCore`` Protocol.

The handler (``_Handler`` in :mod:`tooltrail.collector.server`) owns the connection: framing,
deadlines, credentials and the answers; the route groups are mixins it inherits
(:mod:`~tooltrail.collector.http_traces`, :mod:`~tooltrail.collector.http_approvals`,
:mod:`~tooltrail.collector.http_sessions`, :mod:`~tooltrail.collector.http_events`). Each
mixin method takes ``self: HandlerCore``, so mypy checks both sides: a mixin uses only what
is declared here, and the handler that inherits it must provide all of it.

Example::

    class _Routes:
        def _get_thing(self: HandlerCore) -> None:
            self._json(200, {"ok": True}, kind="other")
"""

from __future__ import annotations

import email.message
from collections.abc import Callable
from io import BufferedIOBase
from typing import TYPE_CHECKING, Any, Protocol

from tooltrail import access
from tooltrail.access import Principal
from tooltrail.collector.receiver import CT_JSON

if TYPE_CHECKING:
    from tooltrail.collector.server import Collector


class HandlerCore(Protocol):
    """The request handler's state and helpers the route mixins call (see server.py)."""

    # BaseHTTPRequestHandler's own: settable ones as attributes, the rest read-only.
    close_connection: bool
    _answered: bool

    @property
    def collector(self) -> Collector: ...
    @property
    def command(self) -> str: ...
    @property
    def headers(self) -> email.message.Message: ...
    @property
    def wfile(self) -> BufferedIOBase: ...

    def send_response(self, code: int, message: str | None = None) -> None: ...
    def send_header(self, keyword: str, value: str) -> None: ...
    def end_headers(self) -> None: ...

    # -- answers and bodies ----------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        kind: str,
        headers: dict[str, str] | None = None,
    ) -> None: ...
    def _json(
        self, status: int, doc: Any, *, kind: str, headers: dict[str, str] | None = None
    ) -> None: ...
    def _error(
        self,
        status: int,
        message: str,
        *,
        kind: str,
        media: str = CT_JSON,
        headers: dict[str, str] | None = None,
    ) -> None: ...
    def _read_body(self, limit: int, kind: str, media: str = CT_JSON) -> bytes | None: ...

    # -- credentials and access control ----------------------------------------------------

    def _bearer(self) -> bytes | None: ...
    def _token_ok(self, *tokens: str | None) -> bool: ...
    def _authorized(self, kind: str, media: str = CT_JSON) -> bool: ...
    def _access_on(self) -> bool: ...
    def _who(self, kind: str, media: str = CT_JSON) -> Principal | None: ...
    def _forbid(self, kind: str, message: str, media: str = CT_JSON) -> None: ...
    def _agent(self, kind: str) -> Principal | None: ...
    def _user(self, kind: str, action: access.Action) -> Principal | None: ...
    def _checked(self, kind: str) -> bool: ...

    # -- shapes shared by the approval and session routes ----------------------------------

    def _client_gone(self) -> bool: ...
    def _long_poll(
        self,
        kind: str,
        query: str,
        read: Callable[[float], dict[str, Any]],
        *,
        checked: bool = False,
    ) -> None: ...
    def _operator_post(
        self,
        kind: str,
        what: str,
        act: Callable[[dict[str, Any]], dict[str, Any]],
        counter: str,
        who: Principal | None,
    ) -> None: ...
    def _post_json(
        self,
        kind: str,
        what: str,
        act: Callable[[dict[str, Any]], dict[str, Any]],
        counter: str,
        allowed: Callable[[str], bool],
        status: int,
    ) -> None: ...
