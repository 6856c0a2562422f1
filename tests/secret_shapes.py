"""The corpus of secret shapes every writer of tooltrail must keep off disk (issue 14 §3).

One place for the shapes, so the instrumentation's, the collector's and the scrubber's
tests all check the same list. Each shape is the arguments a tool call could carry
(``arguments``) and the substrings that must never be found in anything tooltrail writes
(``needles``: the secret parts, long and random enough not to occur by chance).

The first shapes are long-known credential formats; the rest are the families issue 14
found reaching disk.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final

import pytest

# Random-looking, unique values: a needle found anywhere can only have come from here.
GITHUB_TOKEN: Final = "ghp_p2GbDqvIjUmMxaS6iWIn610aC4KIFhOg21v1"
OPENAI_KEY: Final = "sk-proj-UyzCnQXImlROkFEF78KtnaECa33smE5y"
AWS_ACCESS_KEY: Final = "AKIAKSWUQLDMHDIB5MAL"
AWS_SECRET: Final = "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"
PASSWORD: Final = "Hunter2-uIWoW8poQEP4OG5T"
JWT: Final = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJxT3lWMHNrcnQifQ.qOyV0skrtUaBvqVVL5JciXEwWDxw"
BEARER: Final = "grq2x5r717S2vmMV7xfk-I2NoGJ"
URL_PASSWORD: Final = "sQWCY8VYejIdCJwy"
URL_PASSWORD_SLASH: Final = "Xa9tOmwl/UHBLJ8Ic"
API_KEY_HEADER: Final = "pjblrdJYraAfLsjpUpz9izyq"
COOKIE_SESSION: Final = "ASDooDIaNzDZ8szqWxfWmmB7"
PEM_LINES: Final = (
    "-----BEGIN RSA PRIVATE KEY-----",
    "MIIEowIBAAKCAQEAWPCjybBXvelq0MFpKHVtZ2fMcnDuEjAwvxgJ38wrrjZAWNL0TIxtdiN",
    "HpFxCXC3oY5BTNLjr2GKgiRP5rYpkWYbNy6XnAhFmdZmro993avlx0fYXGbYAW4uAv",
    "-----END RSA PRIVATE KEY-----",
)
PEM_BODY: Final = PEM_LINES[1:3]
# Every shape has secrets of its own: a needle found can only come from its shape.
PEM_SPLIT: Final = (
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQz7JfgaVn3PRtUjTAQoi4ILMdCdTbp3",
    "QyNTUxOQAAACDi6uFMxywMQboB35aXdLckLGQSTNjTk3nCEHKskIBPzBsd807wej976Kz",
    "-----END OPENSSH PRIVATE KEY-----",
)
GITHUB_TOKEN_AS_KEY: Final = "ghp_jI4TfOOj9pBhp3mp5MlZ0oEtLdNe9ahrGkXC"
AZURE_SIG: Final = "kT8vQm2Rz7LxN4bW9cY3pJ6hF1sD5gA0eU%2BiO%3D"
AMZ_SIGNATURE: Final = "4e1d9b7c2a6f8e3d5c0b9a7f6e2d4c8b1a3f5e7d9c0b2a4f6e8d1c3b5a7f9e2d"
B64_TOKEN_PLAIN: Final = "tok_Vn3PRtUjTAQoi4ILMdCdTbp3i6uF"
B64_TOKEN: Final = base64.b64encode(f"api-token: {B64_TOKEN_PLAIN}".encode()).decode()
PWD: Final = "mK7qR2vX9pL4-pwd"
PASSCODE: Final = "wZ3nB8tY6cH1-passcode"
SECRET_ACCESS_KEY: Final = "Lq5Wn8Rt2Yz7Xc4Vb1Nm6Kj9Hg3Fd0Sa8Pq2Wr5E"
BARE_AWS_SECRET: Final = "Ty6Ui9Op2As5Df8Gh1Jk4Lz7Xc0Vb3Nm6Qw9Er2/"
ARGV_PASSWORD: Final = "Pz4Rx8Tv2-argv-Yb6Nd"


@dataclass(frozen=True)
class SecretShape:
    """One way a credential reaches a tool call's arguments."""

    name: str
    arguments: dict[str, Any]
    needles: tuple[str, ...]

    def param(self) -> Any:
        """A pytest parameter named after the shape."""
        return pytest.param(self, id=self.name)


SHAPES: Final = (
    # Detected by the shipped scrubber: the neighbours of the families below.
    SecretShape("github_token_value", {"repo": "acme/app", "note": GITHUB_TOKEN}, (GITHUB_TOKEN,)),
    SecretShape("openai_key_in_text", {"prompt": f"use {OPENAI_KEY} please"}, (OPENAI_KEY,)),
    SecretShape(
        "aws_access_key", {"env": {"AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY}}, (AWS_ACCESS_KEY,)
    ),
    SecretShape("password_key", {"user": "alice", "password": PASSWORD}, (PASSWORD,)),
    SecretShape("jwt_in_text", {"header": f"session {JWT}"}, (JWT,)),
    SecretShape(
        "bearer_header_text",
        {"curl": f"curl -H 'Authorization: Bearer {BEARER}' x"},
        (BEARER,),
    ),
    SecretShape(
        "url_password",
        {"remote": f"https://bot:{URL_PASSWORD}@git.example.com/a.git"},
        (URL_PASSWORD,),
    ),
    SecretShape("pem_one_string", {"key": "\n".join(PEM_LINES)}, PEM_BODY),
    SecretShape(
        "aws_secret_assignment",
        {"cfg": f"aws_secret_access_key = {AWS_SECRET}"},
        (AWS_SECRET,),
    ),
    # Issue 14 §3: found reaching Parquet and control.sqlite.
    SecretShape(
        "bare_aws_secret_in_list",
        {"argv": ["aws", "configure", "set", BARE_AWS_SECRET]},
        (BARE_AWS_SECRET,),
    ),
    SecretShape(
        "argv_password_flag",
        {"argv": ["mysql", "-u", "root", "--password", ARGV_PASSWORD]},
        (ARGV_PASSWORD,),
    ),
    SecretShape("key_pwd", {"host": "db", "pwd": PWD}, (PWD,)),
    SecretShape("key_passcode", {"host": "db", "passcode": PASSCODE}, (PASSCODE,)),
    SecretShape(
        "key_secretAccessKey",
        {"region": "eu-west-1", "secretAccessKey": SECRET_ACCESS_KEY},
        (SECRET_ACCESS_KEY,),
    ),
    SecretShape(
        "header_pairs",
        {"headers": [["X-Api-Key", API_KEY_HEADER], ["Cookie", f"session={COOKIE_SESSION}"]]},
        (API_KEY_HEADER, COOKIE_SESSION),
    ),
    SecretShape("pem_split_lines", {"key_lines": list(PEM_SPLIT)}, PEM_SPLIT[1:3]),
    SecretShape(
        "github_token_as_key",
        {"scopes": {GITHUB_TOKEN_AS_KEY: "repo"}},
        (GITHUB_TOKEN_AS_KEY,),
    ),
    SecretShape(
        "url_password_with_slash",
        {"remote": f"https://bot:{URL_PASSWORD_SLASH}@git.example.com/a.git"},
        (URL_PASSWORD_SLASH,),
    ),
    SecretShape(
        "azure_sas_sig",
        {"url": f"https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&sr=b&sig={AZURE_SIG}"},
        (AZURE_SIG,),
    ),
    SecretShape(
        "aws_presigned_signature",
        {
            "url": "https://bucket.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Expires=300&X-Amz-Signature={AMZ_SIGNATURE}"
        },
        (AMZ_SIGNATURE,),
    ),
    SecretShape("base64_token", {"blob": B64_TOKEN}, (B64_TOKEN,)),
)


def _distinct() -> None:
    """No needle of one shape inside another shape's arguments (the test would blame the
    wrong shape)."""
    for shape in SHAPES:
        for other in SHAPES:
            if other is not shape:
                text = repr(other.arguments)
                assert not any(n in text for n in shape.needles), (shape.name, other.name)


_distinct()

__all__ = ["SHAPES", "SecretShape"]
