"""A policy regex matches what Python's ``re`` matches (issue 14 follow-up).

Moving policy regexes to RE2 must not quietly weaken a DENY rule its author wrote and
tested under Python's ``re``: ``$`` still matches before a final newline, ``\\s`` still
matches NBSP, ``\\d`` and ``\\w`` are still Unicode. Also: a DENY rule still sees an integer
too long for ``str()``, and a landed row whose arguments nest deeper than ``json`` recurses
is still decided.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tooltrail.policy import ToolCall, apply_to_row, loads_policy
from tooltrail.policy.cli import policy_cli
from tooltrail.policy.regex import RegexError, compile_regex
from tooltrail.schema import empty_row


def deny_policy(matcher: str) -> str:
    return (
        "version: 1\nrules:\n  - id: block\n"
        f"    when: {{tool: t, args: {{cmd: {matcher}}}}}\n    decision: DENY\n"
    )


# --- 1. Python's semantics, kept on RE2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("^rm -rf /$", "rm -rf /\n"),  # Python's $ matches before a final newline
        (r"DROP\sTABLE", "DROP\xa0TABLE"),  # NBSP is whitespace to Python
        (r"DROP\sTABLE", "DROP\u3000TABLE"),
        (r"DROP\sTABLE", "DROP\x1cTABLE"),  # str.isspace() holds for \x1c-\x1f
        (r"^\d+$", "١٢٣"),  # Arabic-Indic digits are \d
        (r"^\w+$", "café"),
        (r"^\w+$", "Ⅻ²"),  # Python's \w: str.isalnum() (numerics too)
        (r"rm\S+/", "rmé/"),
        (r"end\Z", "the end"),  # \Z is Python's end of text
        (r"^\u00e9$", "é"),
        (r"^\N{BULLET}$", "•"),
        ("^a{,3}$", "aa"),  # Python's {,n} is {0,n}; RE2 read it as a literal
        ("[[:digit:]]", "d]"),  # a set of characters to Python, a POSIX class to RE2
    ],
)
def test_a_deny_rule_matches_what_python_re_matches(pattern: str, text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "possible nested set" for [[
        assert re.search(pattern, text)
    assert compile_regex(pattern).search(text)
    policy = loads_policy(deny_policy("{regex: " + json.dumps(pattern) + "}"))
    assert policy.decide(ToolCall("t", {"cmd": text})).decision == "DENY"


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("^main$", "main\n\n"),  # only one final newline
        ("^main$", "main\nx"),
        (r"\d", "²"),  # not decimal: Python's \d does not match it
        (r"\s", "\u200b"),  # zero-width space is not whitespace
        (r"\w", "-"),
        (r"[[:digit:]]", "7"),
        (r"^\Z", "\n"),
    ],
)
def test_and_does_not_match_what_python_re_does_not(pattern: str, text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert not re.search(pattern, text)
    assert not compile_regex(pattern).search(text)


@pytest.mark.parametrize("pattern", [r"a$\n", r"(a$)b", r"a$\s", r"a$\Z", "a$[a]", "a$."])
def test_a_dollar_followed_by_more_pattern_is_refused(pattern: str) -> None:
    """Python's `$` matches before a final newline without taking it: `a$\\n` matches
    "a\\n". RE2 has no zero-width way to say that: refused rather than mismatched."""
    with pytest.raises(RegexError, match=r"has more pattern after \$"):
        compile_regex(pattern)
    assert compile_regex("(a$|b)c").search("bc")  # another branch may go on


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [("(?i)admin", "adm\u0130n", True), ("(?i)ADMIN", "adm\u0131n", True),
     ("(?i)[a-z]min", "ad\u0130min", True), ("(?i:[^h-j])", "\u0130", False),
     (r"(?i)\w", "\u0345", False)],
)  # fmt: skip
def test_ignorecase_folds_the_dotted_and_dotless_i_as_python_does(
    pattern: str, text: str, expected: bool
) -> None:
    """Python's (?i) puts i, I, İ and ı in one class; RE2's only i and I: a DENY on
    `(?i)admin` must still see "admİn"."""
    assert bool(re.search(pattern, text)) is expected
    assert compile_regex(pattern).search(text) is expected


def test_multiline_dollar_keeps_its_meaning() -> None:
    assert compile_regex("(?m)^a$").search("a\nb")
    assert compile_regex("(?m:a$)").search("a\nb")
    assert not compile_regex("a$").search("a\nb")
    assert compile_regex("(?m:x)?a$").search("a\n")  # the scoped flag ends with its group
    assert compile_regex(r"[$]").search("$") and compile_regex(r"\$").search("a$")


def test_redaction_sees_unicode_whitespace() -> None:
    rx = compile_regex(r"token\s*=\s*\w+")
    assert rx.subn("[R]", "token\u3000=\xa0sécrét1 end") == ("[R] end", 1)


@pytest.mark.parametrize("escape", [r"\b", r"\B"])
def test_a_word_boundary_is_refused_naming_rule_and_line(escape: str, tmp_path: Path) -> None:
    """RE2's \\b is ASCII-only and it has no lookaround to build Python's: refuse."""
    path = tmp_path / "p.yaml"
    pattern = escape + "drop" + escape
    path.write_text(
        "version: 1\nrules:\n  - id: ok\n    when: {tool: a}\n    decision: DENY\n"
        "  - id: sql\n    when:\n      tool: t\n"
        f"      args: {{q: {{regex: {json.dumps(pattern)}}}}}\n"
        "    decision: DENY\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(policy_cli, ["check", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith(
        f"Error: {path}:9: rule 'sql' (rules[1].when.args.q.regex): regex {pattern!r} uses "
        f"{escape} (a word boundary), which is not supported"
    ), result.output
    assert "Traceback" not in result.output
    assert compile_regex(r"[\b]").search("\b")  # in a class it is a backspace, as in Python


def test_a_pattern_too_large_is_named() -> None:
    with pytest.raises(RegexError, match="a pattern too large to compile"):
        compile_regex(r"\w{1000}")


# A differential test: Python's `re` and the translated RE2 pattern agree on random patterns
# of the supported syntax over text rich in newlines, Unicode spaces, digits and letters.
_ATOMS = [
    "a", "1", "_", " ", "é", "٣", ".", "\\n", "\\.", "i", "I", "[h-j]", "[^I]", "(?i:i)",
    r"\s", r"\S", r"\d", r"\D", r"\w", r"\W",
    r"[\s1]", r"[^\d]", r"[\w ]", r"[^\W_]", r"[a-z\d]", r"[\S\n]", r"[$]", r"\$",
]  # fmt: skip
_QUANTIFIERS = ["", "", "*", "+", "?", "{0,2}", "{2}", "*?", "+?", "{,2}"]
_TEXT = st.text(
    alphabet=st.sampled_from(
        ["a", "1", "_", " ", "\n", "\r", "\t", "\xa0", "\u2028", "\x1c", "\x85", "\u3000",
         "٣", "é", "😀", "Ⅻ", "²", "-", "$", ".", "\u200b", "\ud800",
         "i", "I", "\u0130", "\u0131", "A", "\u212a", "k"]
    ),
    max_size=10,
)  # fmt: skip


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    def piece() -> str:
        return draw(st.sampled_from(_ATOMS)) + draw(st.sampled_from(_QUANTIFIERS))

    branches = []
    for _ in range(draw(st.integers(1, 2))):
        parts = [piece() for _ in range(draw(st.integers(1, 4)))]
        dollar = draw(st.sampled_from(["", "", "end", "end", "anywhere"]))
        if dollar == "end":
            parts.append("$")
        elif dollar == "anywhere":  # refused when more pattern follows in the branch
            parts.insert(draw(st.integers(0, len(parts))), "$")
        if draw(st.booleans()):
            k = draw(st.integers(0, len(parts) - 1))
            parts[k] = "(" + parts[k] + ")" + draw(st.sampled_from(_QUANTIFIERS[:4]))
        branches.append(("^" if draw(st.booleans()) else "") + "".join(parts))
    flags = draw(st.sampled_from(["", "", "(?m)", "(?s)", "(?ms)", "(?i)", "(?im)"]))
    return flags + "|".join(branches)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=_patterns(), texts=st.lists(_TEXT, min_size=1, max_size=4))
def test_translated_re2_agrees_with_python_re(pattern: str, texts: list[str]) -> None:
    try:
        rx = compile_regex(pattern)
    except RegexError as e:
        # Only a `$` with more pattern after it in its branch (Python's does not take the
        # final newline; RE2 has no zero-width way to say so) is refused.
        assert "has more pattern after $" in str(e), (pattern, str(e))
        return
    for text in texts:
        assert rx.search(text) == bool(re.search(pattern, text)), (pattern, text)
        # Replacement too, where both engines see the same matches: a `$` match may take
        # the final newline with it (documented), and empty matches are placed differently.
        if "$" not in pattern.replace("\\$", "").replace("[$]", "") and all(
            m.end() > m.start() for m in re.finditer(pattern, text)
        ):
            assert rx.subn("<>", text) == re.subn(pattern, "<>", text), (pattern, text)


# --- 2. an integer too long for str() --------------------------------------------------------


@pytest.mark.parametrize("matcher", ["{regex: '^-?1'}", "'*1*'"])
def test_a_huge_integer_is_seen_by_regex_and_glob_deny_rules(matcher: str) -> None:
    policy = loads_policy(deny_policy(matcher))
    for value in (10**5000, -(10**5000) - 7, 10**200_000):
        assert policy.decide(ToolCall("t", {"cmd": value})).decision == "DENY"
    assert policy.decide(ToolCall("t", {"cmd": 2 * 10**5000})).decision == "ALLOW"


def test_a_huge_integer_is_written_exactly() -> None:
    from tooltrail.policy.numbers import decimal_text

    value = 3**40_000  # 19,085 digits
    digits = decimal_text(-value)
    assert digits.startswith("-") and len(digits) == 1 + 19_085
    # Checked without str(): the digits read back (int() of a string has the same limit
    # as str(); read them in pieces).
    assert _int_from_digits(digits[1:]) == value
    assert decimal_text(-12) == "-12"


def _int_from_digits(digits: str) -> int:
    value = 0
    for i in range(0, len(digits), 4000):
        piece = digits[i : i + 4000]
        value = value * 10 ** len(piece) + int(piece)
    return value


# --- 3. arguments nested deeper than json recurses --------------------------------------------


def _deep_row(depth: int) -> dict[str, object]:
    row = empty_row()
    row.update(
        span_type="tool",
        tool_name="t",
        arguments='{"cmd":"rm -rf /","x":' + "[" * depth + "]" * depth + "}",
    )
    return row


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_a_row_with_deeply_nested_arguments_is_decided(depth: int) -> None:
    policy = loads_policy(deny_policy("{regex: '^rm -rf /$'}"))
    row = _deep_row(depth)
    apply_to_row(policy, row)
    assert row["decision"] == "DENY" and row["policy_rule"] == "block"
    allow = loads_policy(deny_policy("'nothing'"))
    row = _deep_row(depth)
    apply_to_row(allow, row)
    assert row["decision"] == "ALLOW"


def test_a_reason_lands_in_deeply_nested_attributes() -> None:
    """The policy's reason is added to the row's attributes, written back as JSON: that
    too must not recurse (json.dumps raised RecursionError and dropped the row)."""
    policy = loads_policy(deny_policy("{regex: '^rm'}").replace("DENY\n", "DENY\n    reason: no\n"))
    row = _deep_row(5_000)
    row["attributes"] = '{"a":' + "[" * 5_000 + "]" * 5_000 + "}"
    apply_to_row(policy, row)
    assert row["decision"] == "DENY"
    attributes = json.loads(row["attributes"].replace("[" * 5_000 + "]" * 5_000, "[]"))
    assert attributes == {"a": [], "tooltrail.policy.reason": "no"}


def test_a_rewrite_of_deeply_nested_arguments_fails_closed() -> None:
    """Rewriting walks the arguments; past the depth it can walk, the call is denied as a
    policy error (never ALLOW with the secret, never an exception that drops the row)."""
    policy = loads_policy(
        "version: 1\nrules:\n  - id: scrub\n    when: {tool: t}\n    decision: REWRITE\n"
        "    rewrite: {redact: [{regex: 'rm'}]}\n"
    )
    row = _deep_row(5_000)
    apply_to_row(policy, row)
    assert row["decision"] == "DENY" and row["policy_rule"] == "policy-error"


def test_deep_arguments_with_a_too_long_integer_are_still_decided() -> None:
    """Both at once: the iterative reader refuses the integer; the arguments must not then
    read as empty (a DENY rule on another argument would not fire)."""
    policy = loads_policy(deny_policy("{regex: '^rm -rf /$'}"))
    row = empty_row()
    long_int = "9" * 5_000
    row.update(
        span_type="tool",
        tool_name="t",
        arguments='{"cmd":"rm -rf /","n":' + long_int + ',"s":"1' + "2" * 5_000 + '",'
        '"f":1.' + "0" * 5_000 + ',"x":' + "[" * 5_000 + "]" * 5_000 + "}",
    )
    apply_to_row(policy, row)
    assert row["decision"] == "DENY"
    from tooltrail.policy.rows import json_object

    parsed = json_object(row["arguments"])
    assert parsed["n"] == long_int and parsed["s"] == "1" + "2" * 5_000 and parsed["f"] == 1.0


def test_an_in_condition_on_a_deep_argument_is_evaluated() -> None:
    """`in` keyed a deep value with json.dumps (RecursionError: the whole call was denied
    as a policy error instead of being decided by its rules)."""
    policy = loads_policy(
        "version: 1\nrules:\n  - id: ok\n"
        "    when: {tool: t, args: {x: {in: [1, [[]]]}}}\n    decision: ALLOW\n"
        "  - id: block\n    when: {tool: t, args: {cmd: {regex: '^rm'}}}\n    decision: DENY\n"
    )
    row = _deep_row(5_000)
    apply_to_row(policy, row)
    assert row["decision"] == "DENY" and row["policy_rule"] == "block"
    assert policy.decide(ToolCall("t", {"cmd": "ls", "x": [[]]})).decision == "ALLOW"
