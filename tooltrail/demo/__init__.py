"""``tooltrail demo``: the product at work on a real MCP server, end to end.

Two processes, as in production: the agent fleet (``tooltrail.demo.fleet``: instrumented
``ClientSession``s to real ``mcp-server-git`` servers, enforcing ``policy-git.yaml`` at call
time) and, here, a demo approver that decides held calls through the same control store
an operator's ``tooltrail approve`` uses. Then one more session by a client that knows
nothing of tooltrail, governed from outside by the gateway (``tooltrail proxy``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tooltrail import config
from tooltrail.errors import BadInputError, TooltrailError

if TYPE_CHECKING:
    from tooltrail.control import ApprovalRecord, ControlStore

MARKER: Final = ".tooltrail-demo"
APPROVER_NAME: Final = "alice"

__all__ = ["DemoApprover", "DemoReport", "demo_policy_path", "run_demo"]


def demo_policy_path() -> Path:
    """The example git policy shipped with the package (``examples/policy-git.yaml``)."""
    return Path(str(resources.files("tooltrail.demo") / "policy-git.yaml"))


@dataclass
class DemoReport:
    data_dir: Path
    sessions: list[str] = field(default_factory=list)
    approved: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    left_pending: list[str] = field(default_factory=list)
    seconds: float = 0.0


class DemoApprover(threading.Thread):
    """Decides held calls as a person would, through the control store.

    In the order requests arrive: approve after a short wait, deny with a reason, leave
    pending (for the dashboard's operator), approve — and again.
    """

    def __init__(self, data_dir: Path, report: DemoReport, poll_s: float = 0.2) -> None:
        super().__init__(name="tooltrail-demo-approver", daemon=True)
        self.data_dir = data_dir
        self.report = report
        self.poll_s = poll_s
        self.stop = threading.Event()
        self._seen: set[str] = set()
        self.error: BaseException | None = None
        # Requests left pending by an earlier run are the operator's, not this run's.
        self._since = time.time()

    def run(self) -> None:
        from tooltrail.control import ControlStore

        try:
            with ControlStore(self.data_dir) as store:
                while not self.stop.wait(self.poll_s):
                    for record in store.list_approvals("pending"):
                        if record.approval_id not in self._seen and self._ours(record):
                            self._decide(store, record)
        except BaseException as e:  # reported by run_demo, never silently lost
            self.error = e

    def _ours(self, record: ApprovalRecord) -> bool:
        return record.requested_at >= self._since

    def _decide(self, store: ControlStore, record: ApprovalRecord) -> None:
        turn = len(self._seen) % 4
        self._seen.add(record.approval_id)
        who = next((a for a in record.approvers if a != "*"), APPROVER_NAME)
        if turn == 2:
            self.report.left_pending.append(record.approval_id)
            return
        time.sleep(0.3 + 0.2 * turn)  # a person reads the request first
        if turn == 1:
            store.decide(
                record.approval_id,
                "denied",
                by=who,
                reason=f"{record.tool_name} is not planned for this release",
            )
            self.report.denied.append(record.approval_id)
        else:
            store.decide(record.approval_id, "approved", by=who, reason="reviewed the change")
            self.report.approved.append(record.approval_id)


def prepare_data_dir(data_dir: Path, fresh: bool) -> None:
    """Create the demo's data directory; ``fresh`` wipes one the demo made before.

    A directory that holds other data is refused rather than mixed with demo sessions.
    """
    marker = data_dir / MARKER
    if data_dir.exists() and any(data_dir.iterdir()) and not marker.exists():
        raise BadInputError(
            f"{data_dir} holds data that tooltrail demo did not create; "
            "give the demo its own directory with --data"
        )
    if fresh and marker.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("created by tooltrail demo; `tooltrail demo --fresh` may delete it\n")


def _tooltrail() -> list[str]:
    beside = Path(sys.executable).with_name("tooltrail")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from tooltrail.cli import cli; cli()"]


def gateway_session(root: Path, env: dict[str, str]) -> str:
    """One session of a client that knows nothing of tooltrail (a plain MCP SDK client,
    ``tooltrail.demo.plain_client``), governed from outside by ``tooltrail proxy`` in front
    of the same ``mcp-server-git``; its session id."""
    from tooltrail.demo.sandbox import RELEASE_REPO, ensure_sandbox

    repo = next(r for r in ensure_sandbox(root) if r.name != RELEASE_REPO)
    session_id = uuid.uuid4().hex
    server = [sys.executable, "-m", "mcp_server_git", "--repository", str(repo.path)]
    proxy = [
        *_tooltrail(),
        "proxy",
        "--policy",
        str(demo_policy_path()),
        "--data",
        str(root),
        "--session-id",
        session_id,
        "--trigger",
        "manual",
        "--",
        *server,
    ]
    client = [sys.executable, "-m", "tooltrail.demo.plain_client", str(repo.path), "--", *proxy]
    done = subprocess.run(client, capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        raise TooltrailError(f"the demo's gateway client failed:\n{done.stderr.strip()}")
    return session_id


def run_demo(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    sessions: int = 20,
    seed: int = 0,
    fresh: bool = False,
    on_event: Callable[[dict[str, object]], None] | None = None,
) -> DemoReport:
    """Run the fleet against real MCP servers with a demo approver; returns what happened."""
    if sessions < 1:
        raise BadInputError("--sessions must be at least 1")
    root = config.data_dir(data_dir).resolve()
    prepare_data_dir(root, fresh)
    report = DemoReport(root)
    approver = DemoApprover(root, report)
    approver.start()
    start = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "tooltrail.demo.fleet",
        str(root),
        f"--sessions={sessions}",
        f"--seed={seed}",
        f"--policy={demo_policy_path()}",
    ]
    env = {**os.environ, config.ENV_DATA: str(root)}
    env.pop(config.ENV_COLLECTOR_URL, None)  # the demo runs on the embedded store
    try:
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            for line in proc.stdout:
                event = json.loads(line)
                if event.get("event") == "session":
                    report.sessions.append(str(event["session_id"]))
                if on_event is not None:
                    on_event(event)
            errors = proc.stderr.read()
            if proc.wait() != 0:
                raise TooltrailError(f"the demo's agent fleet failed:\n{errors.strip()}")
        report.sessions.append(gateway_session(root, env))
    finally:
        approver.stop.set()
        approver.join(timeout=10)
    if approver.error is not None:
        raise TooltrailError(f"the demo approver failed: {approver.error}") from approver.error
    report.seconds = time.monotonic() - start
    from tooltrail import analytics

    analytics.build_duckdb_file(root)
    return report
