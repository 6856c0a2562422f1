"""Signed decisions: deciders' Ed25519 keys, canonical payloads, and the trust root.

Every decision (approve, deny, pause, resume, cancel) is stored in the control ledger
(``tooltrail.ledger``) as a canonical, versioned payload; with access control on it is
signed by the decider's Ed25519 key, and whoever releases a held call verifies it against
the *trust root* before the call runs (docs/SECURITY.md, "Signed decisions").

* **Canonical form.** Payloads and arguments are serialized with RFC 8785 (JSON
  Canonicalization Scheme, the ``rfc8785`` package), so any language can recompute them.
  The arguments hash is ``jcs-sha256:v1:<hex>``: SHA-256 of the RFC 8785 text of the
  arguments as stored and shown (``jsonable`` first: JSON cannot hold integers beyond
  2^53 or non-finite floats exactly, so those are carried as strings).
* **Keys.** A decider (a user whose role is approver, operator or admin) gets a key pair
  when added or rotated. The private key is kept in ``access.sqlite`` *sealed* under the
  user's own credential (AES-256-GCM, key = HKDF-SHA256 of the credential): only whoever
  presents that credential (the user's CLI, the collector serving the user's request) can
  sign with it, and a copy of the file signs nothing. The public key is a row of
  ``decider_keys``; rotating or disabling revokes it.
* **Relay keys.** The dashboard's OpenID sign-ins unlock no key of their own: a *relay*
  (``tooltrail users add-relay``, role ``relay``) holds a key sealed under its own
  credential, which the dashboard is given, and vouches with it for the e-mail its
  provider signed in. Such an entry names the e-mail as decider, its role and the relay;
  it verifies only for an e-mail that is no key holder's name, granted that role by
  ``tooltrail users map-email`` at the entry's time (the grants are in the trust root).
* **Trust root.** ``$TOOLTRAIL_TRUST_ROOT`` names a file of pinned public keys (written by
  ``tooltrail users`` when the variable is set, or ``tooltrail users export-keys``), which
  the separated deployment keeps where the agent's account cannot write. Without it the
  keys are read from ``access.sqlite`` in the data directory: an account that can write
  the data directory can add its own key there, which every decision surface says.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import rfc8785

from tooltrail import config
from tooltrail._files import write_json_atomically
from tooltrail.errors import NotAuthenticatedError, StoreError, TamperedError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tooltrail.access import Principal

ARGS_HASH_PREFIX: Final = "jcs-sha256:v1:"
REQUEST_V1: Final = "tooltrail-request/v1"
DECISION_V1: Final = "tooltrail-decision/v1"
CONTROL_V1: Final = "tooltrail-control/v1"
SYSTEM_V1: Final = "tooltrail-system/v1"
TRUST_ROOT_V1: Final = "tooltrail-trust-root/v1"
DECIDER_ROLES: Final = ("approver", "operator", "admin")
# A service principal that signs for OpenID identities (the dashboard's), never as itself.
RELAY_ROLE: Final = "relay"
_SAFE_INT: Final = 2**53 - 1
_SEAL_INFO: Final = b"tooltrail decider key seal v1"

# What every decision surface says about the trust root in use.
NO_ROOT_NOTICE: Final = (
    "decisions are not signed: single-user mode (no users in {root}); any process of this"
    " OS account can approve a held call"
)
DATA_DIR_ROOT_NOTICE: Final = (
    "decisions are signed, but verified against keys in {path}, which any process of this"
    " OS account (the agent's too, in the embedded setup) can rewrite; set"
    " TOOLTRAIL_TRUST_ROOT to a key file the agent cannot write (docs/SECURITY.md)"
)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data every language reads the same: what ``json`` cannot
    hold becomes ``str()``, integers beyond 2^53 and non-finite floats become strings."""
    data = json.loads(json.dumps(value, default=str, allow_nan=True))
    # Iterative: arguments may nest deeper than Python's recursion limit.
    stack: list[Any] = [data] if isinstance(data, dict | list) else []
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in list(items):
            if isinstance(item, bool):
                continue
            unsafe_int = isinstance(item, int) and abs(item) > _SAFE_INT
            if unsafe_int or (isinstance(item, float) and not math.isfinite(item)):
                node[key] = str(item)
            elif isinstance(item, dict | list):
                stack.append(item)
    return data


def canonical(value: Any) -> bytes:
    """The RFC 8785 canonical text of ``value`` (after ``jsonable``)."""
    return bytes(rfc8785.dumps(jsonable(value)))


def arguments_hash(arguments: Mapping[str, Any]) -> str:
    """``jcs-sha256:v1:`` and the SHA-256 of the RFC 8785 text of ``arguments``.

    Example: ``arguments_hash({"b": 1, "a": "x"})`` equals, in any language,
    ``"jcs-sha256:v1:" + sha256('{"a":"x","b":1}')``.
    """
    return ARGS_HASH_PREFIX + hashlib.sha256(canonical(dict(arguments))).hexdigest()


def digest(value: Any) -> str:
    """``sha256:<hex>`` of the canonical text of ``value``."""
    return "sha256:" + hashlib.sha256(canonical(value)).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- keys ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeciderKey:
    """A decider's public key, as the trust root holds it."""

    key_id: str
    principal: str
    role: str
    public_key: str  # raw 32 bytes, url-safe base64
    added_at: float
    revoked_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "principal": self.principal,
            "role": self.role,
            "public_key": self.public_key,
            "added_at": self.added_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class EmailGrant:
    """An e-mail's role (``tooltrail users map-email``) and the time it held it: what a
    relay's signature over that e-mail is checked against."""

    email: str
    role: str
    granted_at: float
    revoked_at: float | None = None

    def held_at(self, at: object) -> bool:
        """Whether the grant was in force at ``at`` (a payload's time, not trusted to be
        a number)."""
        if not isinstance(at, int | float) or isinstance(at, bool):
            return False
        return self.granted_at <= at and (self.revoked_at is None or at < self.revoked_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "role": self.role,
            "granted_at": self.granted_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key pair just made: the public half to register, the private half sealed."""

    key_id: str
    public_key: str
    sealed: str


def new_decider_key(credential: str) -> NewKey:
    """A fresh Ed25519 key pair whose private half is sealed under ``credential``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    private = Ed25519PrivateKey.generate()
    key_id = f"dk-{secrets.token_hex(8)}"
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return NewKey(key_id, _b64(public), _seal(credential, key_id, raw))


def _seal_key(credential: str, key_id: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    # The credential holds 256 random bits: a fast KDF suffices (no password to stretch).
    return HKDF(hashes.SHA256(), 32, key_id.encode(), _SEAL_INFO).derive(
        credential.strip().encode()
    )


def _seal(credential: str, key_id: str, raw: bytes) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_seal_key(credential, key_id)).encrypt(nonce, raw, key_id.encode())
    return _b64(nonce + sealed)


def unseal(credential: str, key_id: str, sealed: str) -> Ed25519PrivateKey:
    """The private key sealed under ``credential``; NotAuthenticatedError if it is not
    that credential's."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    blob = _unb64(sealed)
    try:
        raw = AESGCM(_seal_key(credential, key_id)).decrypt(blob[:12], blob[12:], key_id.encode())
    except InvalidTag:
        raise NotAuthenticatedError(
            f"decider key {key_id} does not open with this credential"
        ) from None
    return Ed25519PrivateKey.from_private_bytes(raw)


@dataclass(frozen=True, slots=True)
class Signer:
    """A decider able to sign: who, with which role, and the unsealed private key."""

    principal: str
    role: str
    key_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def sign(self, body: bytes) -> str:
        return _b64(self.private_key.sign(body))


# -- the trust root --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustRoot:
    """The public keys decisions are verified against, and where they come from.

    ``required``: decisions must be signed (access control is on, or a pinned root is set);
    False only in single-user mode. ``pinned``: the keys come from ``$TOOLTRAIL_TRUST_ROOT``
    (a file the agent's account should not be able to write), not from the data directory.
    """

    source: str
    required: bool
    pinned: bool
    keys: Mapping[str, DeciderKey]
    # The e-mails' role grants a relay key may vouch for (none: relays vouch for nobody).
    grants: tuple[EmailGrant, ...] = ()

    def notice(self, root: Path) -> str | None:
        """What decision surfaces say about this root; None when it is a pinned file."""
        if not self.required:
            return NO_ROOT_NOTICE.format(root=root)
        if not self.pinned:
            return DATA_DIR_ROOT_NOTICE.format(path=self.source)
        return None

    @property
    def label(self) -> str:
        """One word for views: ``pinned``, ``data-dir`` or ``unsigned``."""
        if not self.required:
            return "unsigned"
        return "pinned" if self.pinned else "data-dir"

    def verify(self, body: str, key_id: str | None, signature: str | None) -> DeciderKey:
        """The key that signed ``body``; TamperedError when nothing in this root did."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if not key_id or not signature:
            raise TamperedError("it carries no signature")
        key = self.keys.get(key_id)
        if key is None:
            raise TamperedError(f"its key {key_id} is not in the trust root ({self.source})")
        try:
            public = Ed25519PublicKey.from_public_bytes(_unb64(key.public_key))
            public.verify(_unb64(signature), body.encode())
        except (InvalidSignature, ValueError):
            raise TamperedError(f"its signature does not verify with key {key_id}") from None
        return key


def load_trust_root(data_dir: str | os.PathLike[str] | None) -> TrustRoot:
    """The trust root for ``data_dir``: ``$TOOLTRAIL_TRUST_ROOT`` when set (an unreadable
    or malformed file raises StoreError: fail closed), else the data directory's own
    ``decider_keys`` (required as soon as access control is on)."""
    pinned = os.environ.get(config.ENV_TRUST_ROOT, "").strip()
    if pinned:
        return read_trust_file(Path(pinned))
    from tooltrail.access import AccessStore, access_path, enabled

    root = config.data_dir(data_dir)
    if not enabled(root):
        return TrustRoot(str(access_path(root)), required=False, pinned=False, keys={})
    with AccessStore(root) as store:
        keys = store.decider_keys()
        grants = tuple(store.email_grants())
    return TrustRoot(
        str(access_path(root)),
        required=True,
        pinned=False,
        keys={k.key_id: k for k in keys},
        grants=grants,
    )


def read_trust_file(path: Path) -> TrustRoot:
    """A pinned trust root file (``tooltrail-trust-root/v1`` JSON)."""
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("format") != TRUST_ROOT_V1:
            raise ValueError(f"not a {TRUST_ROOT_V1} file")
        keys = [DeciderKey(**k) for k in doc["keys"]]
        # A file written before relays has no grants: relay signatures then verify for
        # nobody (fail closed) until `users export-keys` rewrites it.
        grants = tuple(EmailGrant(**g) for g in doc.get("email_grants", []))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise StoreError(f"cannot read the trust root {path}: {e}") from e
    return TrustRoot(
        str(path), required=True, pinned=True, keys={k.key_id: k for k in keys}, grants=grants
    )


def write_trust_file(path: Path, keys: list[DeciderKey], grants: Sequence[EmailGrant] = ()) -> Path:
    """Write the pinned trust root whole (a temporary file renamed over the old one),
    readable by all (public keys, and which e-mail held which role when), writable by its
    owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": TRUST_ROOT_V1,
        "written_at": time.time(),
        "keys": [k.to_dict() for k in keys],
        "email_grants": [g.to_dict() for g in grants],
    }
    return write_json_atomically(path, doc, 0o644)


def sync_trust_file(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """Rewrite ``$TOOLTRAIL_TRUST_ROOT`` from the data directory's keys and e-mail grants
    (after a user or relay is added, rotated or disabled, an e-mail mapped or unmapped);
    None when the variable is not set."""
    pinned = os.environ.get(config.ENV_TRUST_ROOT, "").strip()
    if not pinned:
        return None
    from tooltrail.access import AccessStore

    with AccessStore(config.data_dir(data_dir)) as store:
        keys = store.decider_keys()
        grants = store.email_grants()
    return write_trust_file(Path(pinned), keys, grants)


def decider_signer(
    data_dir: str | os.PathLike[str] | None, credential: str, *, verified: Principal | None = None
) -> Signer:
    """The signer of the user whose ``credential`` this is (their current key unsealed).
    NotAuthenticatedError when the credential does not verify or holds no decider key.
    ``verified``: the principal a caller already authenticated the credential as (the
    collector's cache), so scrypt is not paid again; the seal still proves the credential."""
    from tooltrail.access import AccessStore

    with AccessStore(config.data_dir(data_dir)) as store:
        principal = verified if verified is not None else store.authenticate(credential)
        found = store.sealed_key(principal.name)
    if found is None:
        raise NotAuthenticatedError(
            f"{principal.name!r} ({principal.role}) holds no decider key: only approvers,"
            " operators and admins sign decisions (rotate the credential to get one)"
        )
    key_id, sealed = found
    return Signer(principal.name, principal.role, key_id, unseal(credential, key_id, sealed))


def relay_signer(data_dir: str | os.PathLike[str] | None, credential: str) -> Signer:
    """The signer of the relay whose ``credential`` this is (``tooltrail users
    add-relay``): its current key unsealed, role ``relay``. NotAuthenticatedError when the
    credential is not an enabled relay's, or its key was revoked (rotated, disabled)."""
    from tooltrail.access import AccessStore, check_relay

    with AccessStore(config.data_dir(data_dir)) as store:
        relay = check_relay(store, credential)
        found = store.sealed_key(relay.name)
    if found is None:
        raise NotAuthenticatedError(f"relay {relay.name!r} holds no current key")
    key_id, sealed = found
    return Signer(relay.name, RELAY_ROLE, key_id, unseal(credential.strip(), key_id, sealed))


__all__ = [
    "ARGS_HASH_PREFIX",
    "RELAY_ROLE",
    "DeciderKey",
    "EmailGrant",
    "Signer",
    "TrustRoot",
    "arguments_hash",
    "canonical",
    "decider_signer",
    "digest",
    "jsonable",
    "load_trust_root",
    "new_decider_key",
    "read_trust_file",
    "relay_signer",
    "sync_trust_file",
    "unseal",
    "write_trust_file",
]
