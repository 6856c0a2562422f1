"""``control.sqlite`` keeps no raw secret, whoever writes it (the store's API, the CLI, the
collector's HTTP API), and a session id that holds one stays a stable key: the agent's raw
id, the id as it landed in Parquet and the stored key find the same session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from collect_support import CollectorProcess, request
from secret_shapes import GITHUB_TOKEN, JWT, OPENAI_KEY, PASSWORD, URL_PASSWORD

from tooltrail.cli import cli
from tooltrail.control import (
    ApprovalRequest,
    ControlStore,
    session_key,
)
from tooltrail.redact import Redactor

RAW_SESSION = f"nightly-{GITHUB_TOKEN}"
NEEDLES = (GITHUB_TOKEN, JWT, OPENAI_KEY, PASSWORD, URL_PASSWORD)
TOKEN = "agent-token-0123456789"
DECIDER = "approver-token-0123456789"


def _written(data: Path) -> list[str]:
    """The needles found in any byte of the store's files (database, WAL, shared memory)."""
    blobs = [p.read_bytes() for p in data.glob("control.sqlite*")]
    assert blobs, "the store was never written"
    return [n for n in NEEDLES if any(n.encode() in b for b in blobs)]


def _landed(session_id: str) -> str:
    """The session id as the exporter lands it (one pass of its scrubber)."""
    return Redactor().scrub_text(session_id)[0]


def _request(**extra: Any) -> ApprovalRequest:
    fields: dict[str, Any] = {
        "tool_name": "git_push",
        "arguments": {"remote": f"https://bot:{URL_PASSWORD}@git.example.com/a.git"},
        "session_id": RAW_SESSION,
        "agent_name": f"bot {OPENAI_KEY}",
        "reason": f"pushes need a look (password={PASSWORD})",
        **extra,
    }
    return ApprovalRequest(**fields)


def test_every_write_is_scrubbed_and_the_session_id_stays_one_key(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        held = store.file_request(_request())
        cut = store.file_request(_request())
        store.decide(held.approval_id, "approved", by="alice", reason=f"saw {JWT}, fine")
        store.set_session_state(RAW_SESSION, "pause", by="ops", reason=f"leaked {GITHUB_TOKEN}")
        # Each spelling of the id reaches the same session: the agent's, the landed one, the key.
        for spelling in (RAW_SESSION, _landed(RAW_SESSION), session_key(RAW_SESSION)):
            assert store.session_state(spelling) == "paused"
            assert store.knows_session(spelling)
            assert {r.approval_id for r in store.list_approvals("all", session_id=spelling)} == {
                held.approval_id,
                cut.approval_id,
            }
        store.set_session_state(
            _landed(RAW_SESSION), "cancel", by="ops", reason=f"password={PASSWORD}"
        )
        assert store.session_state(RAW_SESSION) == "canceled"
        assert [e.action for e in store.control_history(RAW_SESSION)] == ["pause", "cancel"]
        record = store.get(held.approval_id)
        assert record.session_id == "nightly-[REDACTED:github_token]"
        assert record.decision_reason == "saw [REDACTED:jwt], fine"
        assert json.loads(record.arguments) == {
            "remote": "https://bot:[REDACTED:url_password]@git.example.com/a.git"
        }
        assert record.arguments_intact()
        assert store.get(cut.approval_id).decision_reason == (
            "session canceled: password=[REDACTED:key]"
        )
    assert _written(tmp_path) == []


def test_session_key_is_a_fixed_point() -> None:
    for raw in (RAW_SESSION, f"Authorization: Basic {GITHUB_TOKEN[4:]}", "plain-uuid-0f3a"):
        key = session_key(raw)
        assert session_key(key) == key == session_key(_landed(raw))
    assert session_key("plain-uuid-0f3a") == "plain-uuid-0f3a"


def test_the_cli_writes_scrubbed(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        apr = store.file_request(_request()).approval_id
    runner = CliRunner()
    for args in (
        ["approve", apr, "--by", "alice", "--reason", f"token {GITHUB_TOKEN} looked fine"],
        ["pause", RAW_SESSION, "--by", "ops", "--reason", f"see {JWT}"],
    ):
        result = runner.invoke(cli, [args[0], "--data", str(tmp_path), *args[1:]])
        assert result.exit_code == 0, result.output
    with ControlStore(tmp_path) as store:
        assert store.session_state(RAW_SESSION) == "paused"
    assert _written(tmp_path) == []


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    data = tmp_path_factory.mktemp("control-scrub") / "data"
    with CollectorProcess(data, "--token", TOKEN, "--decision-token", DECIDER) as proc:
        yield proc


def _post(col: CollectorProcess, path: str, body: Any, token: str) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    status, _, raw = request(col.url, "POST", path, json.dumps(body).encode(), headers)
    return status, json.loads(raw) if raw else None


def test_the_collectors_http_api_writes_scrubbed(col: CollectorProcess) -> None:
    """A sender that is not tooltrail's broker may post raw values: the store scrubs them."""
    status, filed = _post(
        col,
        "/v1/approvals",
        {
            "tool_name": "git_push",
            "arguments": {"password": PASSWORD, "note": f"use {OPENAI_KEY}"},
            "session_id": RAW_SESSION,
            "agent_name": "remote-bot",
            "reason": f"Authorization: Bearer {JWT}",
        },
        TOKEN,
    )
    assert status == 201, filed
    assert filed["session_id"] == "nightly-[REDACTED:github_token]"
    status, doc = _post(
        col,
        f"/v1/approvals/{filed['approval_id']}/decision",
        {"outcome": "denied", "by": "alice", "reason": f"no: https://u:{URL_PASSWORD}@h"},
        DECIDER,
    )
    assert status == 200, doc
    status, doc = _post(
        col,
        f"/v1/sessions/{quote(RAW_SESSION, safe='')}/control",
        {"action": "pause", "by": "ops", "reason": f"key {OPENAI_KEY}"},
        DECIDER,
    )
    assert (status, doc["state"]) == (200, "paused"), doc
    with ControlStore(col.data_dir) as store:
        assert store.session_state(RAW_SESSION) == "paused"
    assert _written(col.data_dir) == []
