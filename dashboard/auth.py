"""Who is at the dashboard: sign-in, sign-out, and what their role lets them do.

With access control on (``<data>/access.sqlite`` holds a user, docs/SECURITY.md §6) every
page needs a signed-in identity, found fresh on every run (and in every button callback,
which runs before the script) so that a rotation, a disable or an unmapped e-mail signs
the browser out at its next click:

- *Local accounts*: the user's name and the credential ``tooltrail users add`` printed,
  verified with :mod:`tooltrail.access` (scrypt). The browser session then keeps the
  credential's key id and the stored hash it verified against, in server-side session
  state (never in the URL, never the credential itself); each run re-reads that row by
  key id and signs out when it is gone (a rotation issues a new key id), its hash
  changed or the user is disabled. A reload
  of the page starts a new session: sign in again.
- *OpenID Connect* through Streamlit's own ``st.login`` when ``secrets.toml`` has an
  ``[auth]`` section (Streamlit keeps the identity in its signed cookie). The provider's
  e-mail (refused when the provider says it is not verified) holds the role an admin
  gave it with ``tooltrail users map-email EMAIL --role ROLE``; an unmapped e-mail is not
  signed in. Decisions are recorded as that e-mail, signed by the dashboard's *relay*
  key (``tooltrail users add-relay``; its credential in secrets.toml as ``[tooltrail]
  oidc_signer``, or ``$TOOLTRAIL_OIDC_SIGNER``), which vouches for the e-mail and its
  role (docs/SECURITY.md §7). Without a relay, OpenID sign-ins read but cannot decide.

In single-user mode (no users) nothing is checked: the decider is the name typed in the
sidebar, as the command line's ``--by``, and the decision pages say so.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import streamlit as st

from tooltrail import access, config
from tooltrail.dashboard.ui import OPERATOR_KEY  # the typed name, in single-user mode only

Via = Literal["single-user", "local", "oidc"]

# Session-state keys. _SIGNED_IN is never a widget's key: a browser sets widget values,
# so it could otherwise claim to be signed in.
_SIGNED_IN: Final = "_tooltrail_signed_in"
NAME_KEY: Final = "signin_name"
CREDENTIAL_KEY: Final = "signin_credential"
_PROBLEM: Final = "_tooltrail_signin_problem"
# The signed-in decider's signer (tooltrail.signing): their Ed25519 key, unsealed with the
# credential at sign-in and held only in this server's memory for the browser session (the
# credential itself is not kept). Never a widget's key either.
_SIGNER: Final = "_tooltrail_signer"

BAD_SIGN_IN: Final = "Name and credential do not match an enabled user of this data directory."


@dataclass(frozen=True, slots=True)
class Identity:
    """Who acts: ``role`` is None in single-user mode (names are not checked)."""

    name: str
    role: str | None
    via: Via

    def may(self, action: access.Action) -> bool:
        """Whether this identity's role allows ``action`` (single-user mode: everything)."""
        return self.role is None or access.role_may(self.role, action)

    @property
    def label(self) -> str:
        return self.name if self.role is None else f"{self.name} ({self.role})"


def required(root: Path) -> bool:
    """Whether the data directory has access control on (then sign-in is required)."""
    return access.enabled(root)


def current(root: Path) -> Identity | None:
    """Who is acting in this browser session now; None when nobody is (not signed in, or
    in single-user mode no name typed yet). Raises StoreError when the access store
    cannot be read (never read as "no access control")."""
    if not access.enabled(root):
        value = st.session_state.get(OPERATOR_KEY)
        name = value.strip() if isinstance(value, str) else ""
        return Identity(name, None, "single-user") if name else None
    return _local(root) or _oidc(root)


def _local(root: Path) -> Identity | None:
    held = st.session_state.get(_SIGNED_IN)
    if not isinstance(held, dict):
        return None
    with access.AccessStore(root) as store:
        found = store.row_by_key(str(held["key_id"]))
    if (
        found is None
        or not hmac.compare_digest(found[1], str(held["hash"]))
        or found[0].disabled
        or found[0].is_agent
    ):
        del st.session_state[_SIGNED_IN]
        st.session_state[_PROBLEM] = (
            "You were signed out: your credential was rotated or your user disabled."
        )
        return None
    return Identity(found[0].name, found[0].role, "local")


def sign_in(root: Path, name: str, credential: str) -> Identity:
    """Check a local account's name and credential; on success the browser session is
    signed in as that user. NotAuthenticatedError otherwise (one message for a wrong
    name, credential or kind, so that it tells a guesser nothing)."""
    from tooltrail.errors import NotAuthenticatedError

    try:
        _, key_id = access.parse_credential(credential)
        with access.AccessStore(root) as store:
            found = store.row_by_key(key_id)
            principal = access.check_found(credential, found)
    except NotAuthenticatedError:
        raise NotAuthenticatedError(BAD_SIGN_IN) from None
    if principal.is_agent or principal.name != name.strip() or found is None:
        raise NotAuthenticatedError(BAD_SIGN_IN)
    st.session_state[_SIGNED_IN] = {"key_id": key_id, "hash": found[1]}
    st.session_state.pop(_PROBLEM, None)
    st.session_state.pop(_SIGNER, None)
    if access.role_at_least(principal.role, "approver"):
        from tooltrail.signing import decider_signer

        # A decider's decisions are signed with their key (SECURITY.md §7); a user with no
        # key yet (added before signed decisions) is refused when deciding.
        with contextlib.suppress(NotAuthenticatedError):
            st.session_state[_SIGNER] = decider_signer(root, credential, verified=principal)
    return Identity(principal.name, principal.role, "local")


def signer(identity: Identity) -> Any:
    """The signer of the local user signed in as ``identity`` (None: OpenID sign-ins and
    users without a key: the control store then refuses to decide, failing closed)."""
    held = st.session_state.get(_SIGNER)
    if identity.via != "local" or held is None or getattr(held, "principal", None) != identity.name:
        return None
    return held


# --- OpenID Connect through st.login -------------------------------------------------------

RELAY_SECTION: Final = "tooltrail"
RELAY_KEY: Final = "oidc_signer"
NO_RELAY: Final = (
    "{who} signed in through OpenID, which cannot sign decisions: this dashboard has no"
    " relay signer. An admin runs `tooltrail users add-relay dashboard` and gives the"
    " dashboard the credential it prints, in secrets.toml as [tooltrail] oidc_signer ="
    ' "ttr_..." (or $TOOLTRAIL_OIDC_SIGNER); docs/SECURITY.md §7.'
)


def relay_credential() -> str | None:
    """The relay credential this dashboard signs OpenID sign-ins' decisions with:
    ``[tooltrail] oidc_signer`` of secrets.toml (where ``[auth]`` is too), else
    ``$TOOLTRAIL_OIDC_SIGNER``; None when neither is set."""
    value: Any = None
    try:
        section = st.secrets.get(RELAY_SECTION)
    except (FileNotFoundError, KeyError):
        section = None
    if section is not None and hasattr(section, "get"):
        value = section.get(RELAY_KEY)
    if not value:
        value = os.environ.get(config.ENV_OIDC_SIGNER)
    return str(value).strip() if value else None


def relay_signer(root: Path) -> Any:
    """The relay's signer (its key unsealed), checked afresh for each decision: a disabled
    or rotated relay stops signing at once. NotAuthenticatedError without a valid relay."""
    from tooltrail.errors import NotAuthenticatedError
    from tooltrail.signing import relay_signer as unseal_relay

    credential = relay_credential()
    if credential is None:
        raise NotAuthenticatedError(NO_RELAY.format(who="this browser"))
    return unseal_relay(root, credential)


def relay_name(root: Path) -> str | None:
    """The configured relay's name (one indexed read, no hashing), for what the pages say."""
    credential = relay_credential()
    if credential is None:
        return None
    from tooltrail.errors import TooltrailError

    try:
        kind, key_id = access.parse_credential(credential)
        with access.AccessStore(root) as store:
            found = store.row_by_key(key_id)
    except TooltrailError:
        return None
    return found[0].name if kind == "relay" and found is not None else None


def oidc_providers() -> list[str | None]:
    """The providers of ``[auth]`` in secrets.toml: ``[None]`` for one unnamed provider
    (``st.login()``), the names of ``[auth.NAME]`` sections otherwise; [] without one."""
    try:
        section = st.secrets.get("auth")
    except (FileNotFoundError, KeyError):
        return []
    if not section:
        return []
    if "client_id" in section:
        return [None]
    return [
        str(n) for n, value in section.items() if hasattr(value, "get") and value.get("client_id")
    ]


def _oidc_user() -> dict[str, Any] | None:
    """The claims Streamlit's signed cookie carries, when someone signed in through it."""
    user = st.user
    if user.get("is_logged_in") is not True:
        return None
    return {key: user.get(key) for key in ("email", "email_verified", "name")}


def oidc_email() -> str | None:
    """The e-mail (or "your account") Streamlit's OpenID cookie signs in, mapped or not."""
    user = _oidc_user()
    if user is None:
        return None
    email = user.get("email")
    return email if isinstance(email, str) and email else "your account"


def _oidc(root: Path) -> Identity | None:
    user = _oidc_user()
    if user is None:
        return None
    email = user.get("email")
    if not isinstance(email, str) or not email or user.get("email_verified") is False:
        st.session_state[_PROBLEM] = (
            "Your OpenID provider did not vouch for a verified e-mail: nothing here can give"
            " you a role."
        )
        return None
    with access.AccessStore(root) as store:
        mapped = store.email_role(email)
    if mapped is None:
        st.session_state[_PROBLEM] = (
            f"{email} has no role in this data directory: an admin gives it one with"
            f" `tooltrail users map-email {email} --role viewer` (or approver, operator, admin)."
        )
        return None
    return Identity(mapped.email, mapped.role, "oidc")


def sign_out(identity: Identity) -> None:
    """End this browser session's sign-in (and Streamlit's OpenID cookie)."""
    st.session_state.pop(_SIGNED_IN, None)
    st.session_state.pop(_PROBLEM, None)
    st.session_state.pop(_SIGNER, None)
    if identity.via == "oidc":
        st.logout()


def problem() -> str | None:
    """Why the last attempt did not sign anyone in (shown on the sign-in page)."""
    value = st.session_state.get(_PROBLEM)
    return value if isinstance(value, str) else None


__all__ = [
    "BAD_SIGN_IN",
    "CREDENTIAL_KEY",
    "NAME_KEY",
    "NO_RELAY",
    "Identity",
    "current",
    "oidc_email",
    "oidc_providers",
    "problem",
    "relay_credential",
    "relay_name",
    "relay_signer",
    "required",
    "sign_in",
    "sign_out",
]
