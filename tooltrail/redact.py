"""Credential scrubbing: secrets never reach disk.

Everything free-form that tooltrail lands (tool arguments, results, status messages, action
summaries, the ``attributes`` / ``resource`` JSON) goes through a :class:`Redactor` first.
Two rules:

* **shapes**: well-known credential formats anywhere in a string (GitHub / OpenAI /
  Anthropic / AWS / Slack tokens, Slack webhooks, ``Bearer`` and ``Basic`` authorization
  headers, PEM private keys, JWTs, passwords in URLs, ``password=...``-style assignments)
  become ``[REDACTED:<kind>]``;
* **key names**: in mappings, the value of a key named like a credential (``password``,
  ``api_key``, ``GITHUB_TOKEN``, ``Authorization``, ``cookie`` ...) becomes
  ``[REDACTED:key]`` whatever it looks like.

Every replacement is counted, so an auditor sees that something was removed.

Speed: the exporter scrubs every span on the host's export thread, and nearly all text holds
no secret. All kinds form one alternation regex, but it only runs on text that passed a
pre-check: a handful of substring searches for literal markers that every pattern needs
(``sk-``, ``akia``, ``token``, ``://`` ...). Text with no marker costs about a microsecond
per few hundred characters. When markers are present, only the kinds they can start are
compiled into the alternation (cached per combination), so a commit message saying "high"
pays for the GitHub-token pattern alone. This module needs only the standard library, so
the agent-side instrumentation can reuse it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from tooltrail.config import ENV_REDACT, env_flag

REDACTED_TEMPLATE: Final = "[REDACTED:{}]"
KEY_KIND: Final = "key"
_KEY_MARK: Final = REDACTED_TEMPLATE.format(KEY_KIND)
_V = TypeVar("_V")

# Key-name rule: a normalized key (lower case; ``-``, ``.`` and spaces become ``_``) that
# equals or ends with one of these is a credential. "Ends with" catches GITHUB_TOKEN,
# client_secret, x-api-key; it deliberately misses ``input_tokens`` / ``max_tokens``
# (token counts), which end in "tokens".
SENSITIVE_KEY_SUFFIXES: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "secret_key",
    "authorization",
    "cookie",
    "credential",
    "credentials",
)

# The same words as they end a key in free text (``key=value``, ``"key": "value"``).
_KEY_WORDS: Final = (
    r"password|passwd|passphrase|secret|token|api[_\-]?key|access[_\-]?key"
    r"|private[_\-]?key|secret[_\-]?key|authorization|cookie|credentials?"
)
_NOT_ALNUM_BEFORE: Final = r"(?<![A-Za-z0-9])"

# kind -> (pattern, markers). Markers are lower-case substrings; a text matching the
# pattern always contains one of them (lower-cased), which is what makes the pre-check
# safe. A pattern with a group named ``<kind>_p`` keeps that prefix (a key or header name)
# and redacts only the rest. Order matters where two kinds can match at one position:
# the first listed wins.
_KINDS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "private_key": (
        r"-----BEGIN[A-Z ]*PRIVATE KEY[A-Z ]*-----"
        # A block cut short (say, a truncated result) is redacted to the end of the text.
        r"(?s:.*?-----END[A-Z ]*PRIVATE KEY[A-Z ]*-----|.*\Z)",
        ("private key",),
    ),
    "github_token": (
        _NOT_ALNUM_BEFORE + r"(?:gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{22,255})",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    "anthropic_key": (_NOT_ALNUM_BEFORE + r"sk-ant-[A-Za-z0-9_\-]{20,}", ("sk-ant-",)),
    # Legacy keys have no hyphen after "sk-" (so hyphenated words never match); project,
    # service-account and admin keys carry their prefix.
    "openai_key": (
        _NOT_ALNUM_BEFORE + r"sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}|[A-Za-z0-9]{32,})",
        ("sk-",),
    ),
    "aws_access_key": (
        _NOT_ALNUM_BEFORE + r"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
        ("akia", "asia"),
    ),
    "aws_secret_key": (
        r"(?P<aws_secret_key_p>(?i:aws_secret_access_key|aws_secret_key|secret_access_key)"
        r"[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
        ("secret_access_key", "aws_secret_key"),
    ),
    "slack_token": (_NOT_ALNUM_BEFORE + r"xox[abposr]-[A-Za-z0-9\-]{10,}", ("xox",)),
    "slack_webhook": (
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]+",
        ("://hooks.slack.com",),
    ),
    "basic_auth": (
        r"(?P<basic_auth_p>(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?i:basic)\s+)"
        r"[A-Za-z0-9+/]{4,}=*",
        ("authorization",),
    ),
    # 12+ characters with at least one non-letter, so prose such as "the bearer
    # instrument" is left alone.
    "bearer_token": (
        r"(?P<bearer_token_p>" + _NOT_ALNUM_BEFORE + r"(?i:bearer)\s+)"
        r"(?=[A-Za-z]*[0-9\-._~+/])[A-Za-z0-9\-._~+/]{12,}=*",
        ("bearer",),
    ),
    # Header and payload are base64url JSON objects, so both start "eyJ". The signature
    # is optional: unsigned tokens and tokens cut by truncation are still caught.
    "jwt": (
        _NOT_ALNUM_BEFORE + r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*)?",
        ("eyj",),
    ),
    "url_password": (
        r"(?P<url_password_p>://[^\s/:@\"']+:)[^\s/@\"']+(?=@)",
        ("://",),
    ),
    # key=value, key: value, "key": "value" (the word may end a longer name such as
    # GITHUB_TOKEN or x-api-key). A quoted value is redacted inside its quotes, so JSON
    # text stays well-formed; a bare value stops at whitespace, quotes and JSON punctuation.
    KEY_KIND: (
        rf"(?P<{KEY_KIND}_p>{_NOT_ALNUM_BEFORE}(?i:{_KEY_WORDS})[\"']?\s*[:=]\s*)"
        r"(?:\"(?:[^\"\\\n]|\\.)*(?:\"|\Z)|'[^'\n]*(?:'|\Z)"
        r"|(?:(?i:bearer|basic|token|digest)\s+)?[^\s\"'&,;{}\[\]]+)",
        (
            "password",
            "passwd",
            "passphrase",
            "secret",
            "token",
            "api_key",
            "api-key",
            "apikey",
            "access_key",
            "access-key",
            "private_key",
            "private-key",
            "authorization",
            "cookie",
            "credential",
        ),
    ),
}

_PREFIXED: Final = frozenset(
    kind for kind, (pattern, _) in _KINDS.items() if f"<{kind}_p>" in pattern
)
_KIND_ORDER: Final = tuple(_KINDS)
_REGEX_CACHE_MAX: Final = 256
_KEY_CACHE_MAX: Final = 4096
_MAX_SECRET_DEPTH: Final = 100
# Flags for every pattern: ASCII keeps (?i) and \s to ASCII, matching the pre-check, which
# lower-cases text and looks for ASCII markers.
_FLAGS: Final = re.ASCII


def _may_hold_secret(low: str) -> bool:
    """First pre-check tier on lower-cased text: one short marker per family of kinds.

    Every kind's markers (second tier) contain one of these, so False here means no
    pattern can match. Written as one expression: this runs for every landed span.
    """
    return (
        "key" in low  # private key, api_key, apikey, access-key, private_key
        or "secret" in low
        or "token" in low
        or "pass" in low  # password, passwd, passphrase
        or "auth" in low  # authorization
        or "bearer" in low
        or "cookie" in low
        or "credential" in low
        or "gh" in low  # ghp_ gho_ ghu_ ghs_ ghr_
        or "github_pat_" in low
        or "sk-" in low
        or "akia" in low
        or "asia" in low
        or "xox" in low
        or "eyj" in low
        or "://" in low  # URL passwords, Slack webhooks
    )


def _normalize_key(key: str) -> str:
    return key.lower().replace("-", "_").replace(".", "_").replace(" ", "_")


_MARKER: Final = re.compile(r"\[REDACTED(?::[A-Za-z0-9_.-]+)?\]")


def is_redaction_marker(value: Any) -> bool:
    """Whether ``value`` is a redaction marker (``[REDACTED]``, ``[REDACTED:key]``…)."""
    return isinstance(value, str) and _MARKER.fullmatch(value) is not None


def _holds_secret(value: Any) -> bool:
    # Empty strings, None and booleans under a credential-named key reveal nothing, nor
    # does a value a policy already redacted (scrubbing it again would count it twice).
    return (
        value is not None
        and value != ""
        and not isinstance(value, bool)
        and not is_redaction_marker(value)
    )


class Redactor:
    """Scrubs credentials from text and from JSON-like objects.

    Args:
        enabled: when False every method returns its input unchanged with a count of 0.
        extra_patterns: more shapes, ``{kind: regex}``; a match becomes ``[REDACTED:kind]``.
            They run on every non-empty string (they have no pre-check), so keep them few.
        extra_keys: more credential key names, matched like the built-in ones (equal, or
            a suffix after normalization: ``"pin"`` also catches ``card_pin``).
    """

    __slots__ = (
        "_clean_keys",
        "_extra",
        "_extra_key_markers",
        "_extra_kinds",
        "_key_cache",
        "_key_suffixes",
        "_regex_cache",
        "enabled",
    )

    def __init__(
        self,
        enabled: bool = True,
        extra_patterns: Mapping[str, str | re.Pattern[str]] | None = None,
        extra_keys: Iterable[str] = (),
    ) -> None:
        self.enabled = enabled
        extra = tuple(_normalize_key(k) for k in extra_keys if k)
        self._key_suffixes: tuple[str, ...] = SENSITIVE_KEY_SUFFIXES + extra
        # A key's text always contains each piece of its normalized name, so the longest
        # piece is a safe pre-check marker for text holding such a key.
        self._extra_key_markers = tuple(max(k.split("_"), key=len) for k in extra)
        self._key_cache: dict[str, bool] = {}
        self._clean_keys: set[str] = set()
        self._regex_cache: dict[tuple[str, ...], re.Pattern[str]] = {}
        self._extra: re.Pattern[str] | None = None
        self._extra_kinds: dict[str, str] = {}
        if extra_patterns:
            self._extra = self._compile_extra(extra_patterns)

    def _compile_extra(self, patterns: Mapping[str, str | re.Pattern[str]]) -> re.Pattern[str]:
        parts = []
        for i, (kind, pattern) in enumerate(patterns.items()):
            source = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
            try:
                re.compile(source)
            except re.error as e:
                raise ValueError(f"redaction pattern {kind!r} is not a valid regex: {e}") from e
            self._extra_kinds[f"x{i}"] = kind
            parts.append(f"(?P<x{i}>{source})")
        return re.compile("|".join(parts))

    @classmethod
    def from_env(cls) -> Redactor:
        """On unless ``$TOOLTRAIL_REDACT`` is a false value (0 / false / no / off ...)."""
        return cls(enabled=env_flag(ENV_REDACT, default=True, unrecognized=True))

    # -- text ---------------------------------------------------------------------------

    def maybe_sensitive(self, s: str) -> bool:
        """False when ``s`` certainly holds nothing to redact (cheap; may say True wrongly).

        "Nothing" covers both rules: no credential shape, and no credential key name
        (every built-in and extra key name contains a marker), so a False for a JSON
        document's text means walking it would change nothing.
        """
        if not self.enabled:
            return False
        if self._extra is not None:
            return True
        low = s.lower()
        if _may_hold_secret(low):
            return True
        return bool(self._extra_key_markers) and any(m in low for m in self._extra_key_markers)

    def scrub_text(self, s: str) -> tuple[str, int]:
        """``s`` with every credential shape replaced, and how many were replaced."""
        if not self.enabled or not s:
            return s, 0
        count = 0
        low = s.lower()
        if _may_hold_secret(low):
            kinds = tuple(k for k in _KIND_ORDER if any(m in low for m in _KINDS[k][1]))
            if kinds:
                s, count = _substitute(self._regex_for(kinds), s)
        if self._extra is not None:
            s, extra = _substitute(self._extra, s, self._extra_kinds)
            count += extra
        return s, count

    def _regex_for(self, kinds: tuple[str, ...]) -> re.Pattern[str]:
        regex = self._regex_cache.get(kinds)
        if regex is None:
            source = "|".join(f"(?P<{k}>{_KINDS[k][0]})" for k in kinds)
            regex = re.compile(source, _FLAGS)
            if len(self._regex_cache) >= _REGEX_CACHE_MAX:
                self._regex_cache.clear()
            self._regex_cache[kinds] = regex
        return regex

    # -- objects ------------------------------------------------------------------------

    def is_sensitive_key(self, key: str) -> bool:
        """True when the value under ``key`` is a credential whatever it looks like."""
        if not self.enabled:
            return False
        hit = self._key_cache.get(key)
        if hit is None:
            hit = _normalize_key(key).endswith(self._key_suffixes)
            if len(self._key_cache) >= _KEY_CACHE_MAX:
                self._key_cache.clear()
            self._key_cache[key] = hit
        return hit

    def all_keys_clean(self, keys: Iterable[str]) -> bool:
        """True when no key in ``keys`` is credential-named (one set operation when the
        keys were all seen before, which for span attribute names is nearly always)."""
        if not self.enabled or self._clean_keys.issuperset(keys):
            return True
        unknown = set(keys) - self._clean_keys
        if any(self.is_sensitive_key(k) for k in unknown):
            return False
        if len(self._clean_keys) >= _KEY_CACHE_MAX:
            self._clean_keys.clear()
        self._clean_keys.update(unknown)
        return True

    def scrub_obj(self, obj: Any) -> tuple[Any, int]:
        """A scrubbed copy of a JSON-like value (dicts, lists, tuples, strings, scalars).

        Values of credential-named keys become ``[REDACTED:key]``; strings are scanned for
        shapes (a string that itself holds a JSON object or array is scrubbed as JSON, so it
        stays parseable). Tuples come back as lists, their JSON form.
        """
        if not self.enabled:
            return obj, 0
        return self._walk(obj)

    def secret_values(self, obj: Any) -> list[Any]:
        """The values :meth:`scrub_obj` would replace for their credential-named key: what
        must not reappear in a result or an error message that quotes them."""
        if not self.enabled:
            return []
        found: list[Any] = []
        self._secrets(obj, found, 0)
        return found

    def _secrets(self, obj: Any, found: list[Any], depth: int) -> None:
        if depth > _MAX_SECRET_DEPTH:
            return
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                if isinstance(k, str) and self.is_sensitive_key(k) and _holds_secret(v):
                    found.append(v)
                else:
                    self._secrets(v, found, depth + 1)
        elif isinstance(obj, list | tuple):
            for v in obj:
                self._secrets(v, found, depth + 1)

    def _walk(self, obj: Any) -> tuple[Any, int]:
        if isinstance(obj, str):
            if obj[:1] in ("{", "[") and self.maybe_sensitive(obj):
                return self.scrub_json(obj)
            return self.scrub_text(obj)
        if isinstance(obj, Mapping):
            out: dict[Any, Any] = {}
            total = 0
            for k, v in obj.items():
                if isinstance(k, str) and self.is_sensitive_key(k) and _holds_secret(v):
                    out[k] = _KEY_MARK
                    total += 1
                    continue
                out[k], n = self._walk(v)
                total += n
            return out, total
        if isinstance(obj, list | tuple):
            items: list[Any] = []
            total = 0
            for v in obj:
                item, n = self._walk(v)
                items.append(item)
                total += n
            return items, total
        return obj, 0

    def scrub_json(self, text: str) -> tuple[str, int]:
        """Scrub a JSON document given as text; the result is still valid JSON.

        The document is parsed and walked (so key names count too) only when the
        pre-check finds a marker; text that is not JSON is scrubbed as plain text.
        """
        if not self.maybe_sensitive(text):
            return text, 0
        try:
            doc = json.loads(text)
        except ValueError:
            return self.scrub_text(text)
        scrubbed, count = self._walk(doc)
        if count == 0:
            return text, 0
        return json.dumps(scrubbed, ensure_ascii=False, separators=(",", ":")), count


def _substitute(
    regex: re.Pattern[str], s: str, labels: Mapping[str, str] | None = None
) -> tuple[str, int]:
    count = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal count
        # lastgroup is the group that closed last: the kind's own group, since a prefix
        # group ``<kind>_p`` nests inside it and closes first.
        group = m.lastgroup or ""
        kind = labels[group] if labels is not None else group
        mark = REDACTED_TEMPLATE.format(kind)
        if labels is not None or kind not in _PREFIXED:
            count += 1
            return mark
        prefix = m.group(f"{kind}_p")
        value = m.group(0)[len(prefix) :]
        if is_redaction_marker(value.strip("'\"")):
            # Scrubbed before (the instrumentation scrubs as values enter the span, the
            # exporter again as they land): nothing new removed, so nothing counted.
            return m.group(0)
        count += 1
        # Keep the quotes around a quoted value, so JSON / YAML text stays well-formed.
        quote = value[:1]
        if quote in ("'", '"'):
            closed = len(value) >= 2 and value.endswith(quote)
            return f"{prefix}{quote}{mark}{quote if closed else ''}"
        return prefix + mark

    return regex.sub(repl, s), count


_STABLE_PASSES: Final = 4


def scrub_stable(scrub: Callable[[_V], tuple[_V, int]], value: _V) -> tuple[_V, int]:
    """``scrub(value)`` (a Redactor's ``scrub_text``, ``scrub_obj`` or ``scrub_json``) run
    again until a pass removes nothing; the count is the first pass's (what was removed).

    One pass can leave text a second pass changes (``Authorization: Basic <token>`` keeps
    ``Basic``, which the key rule then takes). Scrubbed to the end, a value is a fixed
    point: a later scrub (the exporter's, the control store's) neither changes nor counts
    it again, and a key scrubbed once or twice is the same key."""
    value, count = scrub(value)
    if count:
        for _ in range(_STABLE_PASSES):
            value, again = scrub(value)
            if not again:
                break
    return value, count


__all__ = ["KEY_KIND", "REDACTED_TEMPLATE", "SENSITIVE_KEY_SUFFIXES", "Redactor", "scrub_stable"]
