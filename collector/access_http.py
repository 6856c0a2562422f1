"""Who is asking, for ``tooltrail collect`` once its data directory has access control
(docs/COLLECTOR.md, "Access control"): the bearer credential's user or agent.

Access control is read from ``<data>/access.sqlite`` on each request until it is seen on;
from then on it stays on for the collector's life (a store deleted while it runs does not
turn checks off). A credential is verified with scrypt once per process
(:class:`tooltrail.access.CredentialCache`); every request re-reads its row, so a disable
or a rotation holds from the next request on.
"""

from __future__ import annotations

from pathlib import Path

from tooltrail import access
from tooltrail.access import Principal
from tooltrail.control import session_key
from tooltrail.errors import NotAuthenticatedError
from tooltrail.signing import Signer, decider_signer


class AccessGate:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._on = False
        self._cache = access.CredentialCache()

    def on(self) -> bool:
        """Whether the data directory has access control (sticky once seen)."""
        if not self._on and access.enabled(self.data_dir):
            self._on = True
        return self._on

    def authenticate(self, bearer: bytes | None) -> Principal:
        """The enabled user or agent whose credential ``bearer`` is (NotAuthenticatedError
        otherwise: none, unknown, rotated, disabled)."""
        if bearer is None:
            raise NotAuthenticatedError(
                "access control is on: send a user's or agent's credential as"
                " 'Authorization: Bearer ...'"
            )
        try:
            text = bearer.decode("ascii")
        except UnicodeDecodeError:
            raise NotAuthenticatedError("the bearer credential is not ASCII") from None
        with access.AccessStore(self.data_dir) as store:
            return self._cache.authenticate(store, text)

    def signer(self, who: Principal, bearer: bytes | None) -> Signer:
        """``who``'s decider key, unsealed with the credential it just presented: the
        collector signs a decision as the user whose request it serves, and only then
        (it keeps no key it could sign with on its own)."""
        credential = (bearer or b"").decode("ascii", "replace").strip()
        return decider_signer(self.data_dir, credential, verified=who)

    def owns_session(self, agent: str, session_id: str) -> bool:
        """Whether the session is ``agent``'s: the first agent to use a session id (file a
        request in it, read its control state) holds it; any other is refused."""
        with access.AccessStore(self.data_dir) as store:
            return store.claim_session(agent, session_key(session_id))
