"""The corpus of secret shapes every writer of tooltrail must keep off disk (issue 14 §3).

One place for the shapes, so the instrumentation's, the collector's and the scrubber's
tests all check the same list. Each shape is the arguments a tool call could carry
(``arguments``) and the substrings that must never be found in anything tooltrail writes
(``needles``: the secret parts, long and random enough not to occur by chance).

``today``: the shipped ``tooltrail.redact.Redactor`` already detects it. The others are
the families issue 14 found reaching disk; their tests are marked xfail
(``needs_families``) until the scrubber learns them, then the mark comes off.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final

import pytest

# Random-looking, unique values: a needle found anywhere can only have come from here.
GITHUB_TOKEN: Final = "ghp_Q7fLk2Vx9RtZp4Wm8Yc1Bn6Hd3Js5Ga0Ke2U"
OPENAI_KEY: Final = "sk-proj-Zq8Rk3Lm9Tx2Vb7Nc4Wp6Yd1Hs5Jf0Ga3QeRt"
AWS_ACCESS_KEY: Final = "AKIAZQ7RLM3TX9VB2NCW"
AWS_SECRET: Final = "wQ7rLm3Tx9Vb2Nc4Wp6Yd1Hs5Jf0Ga8ZkEt/XuP+"
PASSWORD: Final = "Hunter2-Zq8Rk3Lm9Tx"
JWT: Final = (
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ6cTdybG0zdHg5In0.Zq8Rk3Lm9Tx2Vb7Nc4Wp6Yd1Hs5Jf0Ga3QeRtUv"
)
BEARER: Final = "Zq8Rk3Lm9Tx2Vb7Nc4Wp6-Yd1Hs5Jf0"
URL_PASSWORD: Final = "Rk3Lm9Tx2Vb7Nq"
URL_PASSWORD_SLASH: Final = "Lm9T/x2Vb7Nc4Wq"
API_KEY_HEADER: Final = "Wp6Yd1Hs5Jf0Ga3QeRtUvXy"
COOKIE_SESSION: Final = "Nc4Wp6Yd1Hs5Jf0Ga3QeRtZz"
PEM_LINES: Final = (
    "-----BEGIN RSA PRIVATE KEY-----",
    "MIIEowIBAAKCAQEAzq8Rk3Lm9Tx2Vb7Nc4Wp6Yd1Hs5Jf0Ga3QeRtUvXyZaBcDeFgHi",
    "JkLmNoPqRsTuVwXyZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN",
    "-----END RSA PRIVATE KEY-----",
)
PEM_BODY: Final = PEM_LINES[1:3]
AZURE_SIG: Final = "Zq8Rk3Lm9Tx2Vb7Nc4Wp6Yd1Hs5Jf0Ga3QeRtUvXy%3D"
AMZ_SIGNATURE: Final = "9f3c1a7e5b2d4c6e8a0b1c3d5e7f9a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e3f"
B64_TOKEN_PLAIN: Final = "tok_Zq8Rk3Lm9Tx2Vb7Nc4Wp6Yd1Hs5Jf0"
B64_TOKEN: Final = base64.b64encode(f"api-token: {B64_TOKEN_PLAIN}".encode()).decode()
PWD: Final = "Tx2Vb7Nc4Wp6-pwd"
PASSCODE: Final = "Vb7Nc4Wp6Yd1-passcode"
SECRET_ACCESS_KEY: Final = "Jf0Ga3QeRtUvXyZaBcDeFgHiJkLmNoPqRsTuVwXy"
BARE_AWS_SECRET: Final = "bQ9sLn4Uy0Wc3Od5Xq7Ze2It6Kg1Hb9AlFu/YvQ+"
ARGV_PASSWORD: Final = "Yd1Hs5Jf0-argv-Ga3Qe"


@dataclass(frozen=True)
class SecretShape:
    """One way a credential reaches a tool call's arguments."""

    name: str
    arguments: dict[str, Any]
    needles: tuple[str, ...]
    today: bool

    def param(self) -> Any:
        """A pytest parameter, marked xfail when today's scrubber does not know the shape."""
        marks = () if self.today else (needs_families,)
        return pytest.param(self, id=self.name, marks=marks)


needs_families: Final = pytest.mark.xfail(strict=False, reason="needs redact.py families")

SHAPES: Final = (
    # Detected by the shipped scrubber: the neighbours of the families below.
    SecretShape(
        "github_token_value", {"repo": "acme/app", "note": GITHUB_TOKEN}, (GITHUB_TOKEN,), True
    ),
    SecretShape("openai_key_in_text", {"prompt": f"use {OPENAI_KEY} please"}, (OPENAI_KEY,), True),
    SecretShape(
        "aws_access_key", {"env": {"AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY}}, (AWS_ACCESS_KEY,), True
    ),
    SecretShape("password_key", {"user": "alice", "password": PASSWORD}, (PASSWORD,), True),
    SecretShape("jwt_in_text", {"header": f"session {JWT}"}, (JWT,), True),
    SecretShape(
        "bearer_header_text",
        {"curl": f"curl -H 'Authorization: Bearer {BEARER}' x"},
        (BEARER,),
        True,
    ),
    SecretShape(
        "url_password",
        {"remote": f"https://bot:{URL_PASSWORD}@git.example.com/a.git"},
        (URL_PASSWORD,),
        True,
    ),
    SecretShape("pem_one_string", {"key": "\n".join(PEM_LINES)}, PEM_BODY, True),
    SecretShape(
        "aws_secret_assignment",
        {"cfg": f"aws_secret_access_key = {AWS_SECRET}"},
        (AWS_SECRET,),
        True,
    ),
    # Issue 14 §3: found reaching Parquet and control.sqlite.
    SecretShape(
        "bare_aws_secret_in_list",
        {"argv": ["aws", "configure", "set", BARE_AWS_SECRET]},
        (BARE_AWS_SECRET,),
        False,
    ),
    SecretShape(
        "argv_password_flag",
        {"argv": ["mysql", "-u", "root", "--password", ARGV_PASSWORD]},
        (ARGV_PASSWORD,),
        False,
    ),
    SecretShape("key_pwd", {"host": "db", "pwd": PWD}, (PWD,), False),
    SecretShape("key_passcode", {"host": "db", "passcode": PASSCODE}, (PASSCODE,), False),
    SecretShape(
        "key_secretAccessKey",
        {"region": "eu-west-1", "secretAccessKey": SECRET_ACCESS_KEY},
        (SECRET_ACCESS_KEY,),
        False,
    ),
    SecretShape(
        "header_pairs",
        {"headers": [["X-Api-Key", API_KEY_HEADER], ["Cookie", f"session={COOKIE_SESSION}"]]},
        (API_KEY_HEADER, COOKIE_SESSION),
        False,
    ),
    SecretShape("pem_split_lines", {"key_lines": list(PEM_LINES)}, PEM_BODY, False),
    SecretShape("github_token_as_key", {"scopes": {GITHUB_TOKEN: "repo"}}, (GITHUB_TOKEN,), False),
    SecretShape(
        "url_password_with_slash",
        {"remote": f"https://bot:{URL_PASSWORD_SLASH}@git.example.com/a.git"},
        (URL_PASSWORD_SLASH,),
        False,
    ),
    SecretShape(
        "azure_sas_sig",
        {"url": f"https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&sr=b&sig={AZURE_SIG}"},
        (AZURE_SIG,),
        False,
    ),
    SecretShape(
        "aws_presigned_signature",
        {
            "url": "https://bucket.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Expires=300&X-Amz-Signature={AMZ_SIGNATURE}"
        },
        (AMZ_SIGNATURE,),
        False,
    ),
    SecretShape("base64_token", {"blob": B64_TOKEN}, (B64_TOKEN,), False),
)

__all__ = ["SHAPES", "SecretShape", "needs_families"]
