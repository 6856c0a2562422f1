"""``tooltrail demo``: the product at work on a real MCP server, end to end.

Two processes, as in production: the agent fleet (``tooltrail.demo.fleet``: instrumented
``ClientSession``s to real ``mcp-server-git`` servers, enforcing ``policy-git.yaml`` at call
time) and, here, a demo approver that decides held calls through the same control store
an operator's ``tooltrail approve`` uses. Then one more session by a client that knows
nothing of tooltrail, governed from outside by the gateway (``tooltrail proxy``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
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

__all__ = ["DemoApprover", "DemoReport", "DemoRun", "demo_policy_path", "run_demo"]


def demo_policy_path() -> Path:
    """The example git policy shipped with the package (``examples/policy-git.yaml``)."""
    return Path(str(resources.files("tooltrail.demo") / "policy-git.yaml"))


@dataclass
class DemoReport:
    data_dir: Path
    sessions: list[str] = field(default_factory=list)
    approved: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    # The operator's held calls (approval ids): pending, their agents waiting, when the
    # demo reports ready; how each ended is in the store once the demo has stopped.
    left_pending: list[str] = field(default_factory=list)
    seconds: float = 0.0


class DemoApprover(threading.Thread):
    """Decides held calls as a person would, through the control store.

    Only calls of sessions the fleet announced as the approver's: in the order they
    arrive, approve after a short wait, deny with a reason, approve — and again. Calls of
    the operator's sessions are left pending (their agents wait for a person) and listed
    in ``report.left_pending``; a request of a session not announced yet waits for its
    announcement, so the operator's calls are never decided here by a race.
    """

    def __init__(self, data_dir: Path, report: DemoReport, poll_s: float = 0.2) -> None:
        super().__init__(name="tooltrail-demo-approver", daemon=True)
        self.data_dir = data_dir
        self.report = report
        self.poll_s = poll_s
        self.stop = threading.Event()
        self._seen: set[str] = set()
        self._decided = 0
        self._lock = threading.Lock()
        self._for_operator: dict[str, bool] = {}
        self.error: BaseException | None = None
        # Requests left pending by an earlier run are the operator's, not this run's.
        self._since = time.time()

    def announce(self, session_id: str, for_operator: bool) -> None:
        with self._lock:
            self._for_operator[session_id] = for_operator

    def operator_sessions(self) -> set[str]:
        with self._lock:
            return {s for s, theirs in self._for_operator.items() if theirs}

    def run(self) -> None:
        from tooltrail.control import ControlStore

        try:
            with ControlStore(self.data_dir) as store:
                while not self.stop.wait(self.poll_s):
                    for record in store.list_approvals("pending"):
                        if record.approval_id not in self._seen and self._ours(record):
                            self._handle(store, record)
        except BaseException as e:  # reported by run_demo, never silently lost
            self.error = e

    def _ours(self, record: ApprovalRecord) -> bool:
        return record.requested_at >= self._since

    def _handle(self, store: ControlStore, record: ApprovalRecord) -> None:
        with self._lock:
            for_operator = self._for_operator.get(record.session_id or "")
        if for_operator is None:
            return  # its session's announcement is still on its way
        self._seen.add(record.approval_id)
        if for_operator:
            self.report.left_pending.append(record.approval_id)
        else:
            self._decide(store, record)

    def _decide(self, store: ControlStore, record: ApprovalRecord) -> None:
        from tooltrail.control import AlreadyDecidedError

        turn = self._decided % 3
        self._decided += 1
        who = next((a for a in record.approvers if a != "*"), APPROVER_NAME)
        time.sleep(0.3 + 0.2 * turn)  # a person reads the request first
        try:
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
        except AlreadyDecidedError:
            pass  # its agent gave up first (HOLD_LIMIT_S): the store says abandoned


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


class DemoRun:
    """The demo's agent fleet and approver, as a context manager that stops them.

    ``ready()`` returns when every session the approver decides has ended and the
    operator's held calls are pending, their agents waiting; ``wait_for_operator(s)``
    keeps them waiting; leaving the ``with`` block stops the fleet: its waiting agents
    give up (their requests become ``abandoned``), everything lands, and no process of
    the demo is left behind.
    """

    READY_TIMEOUT_S: Final = 300.0
    STOP_TIMEOUT_S: Final = 20.0

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        sessions: int = 20,
        seed: int = 0,
        fresh: bool = False,
        on_event: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        if sessions < 1:
            raise BadInputError("--sessions must be at least 1")
        self.root = config.data_dir(data_dir).resolve()
        self.sessions = sessions
        self.seed = seed
        self.fresh = fresh
        self.on_event = on_event
        self.report = DemoReport(self.root)
        self.approver = DemoApprover(self.root, self.report)
        self.proc: subprocess.Popen[str] | None = None
        self._waiting = -1  # the operator's calls the fleet holds, once it is ready
        self._ready = threading.Event()
        self._exited = threading.Event()
        self._stderr: list[str] = []
        self._threads: list[threading.Thread] = []
        self._start = 0.0
        self._since = time.time()
        self._env: dict[str, str] = {}

    def __enter__(self) -> DemoRun:
        prepare_data_dir(self.root, self.fresh)
        self.approver.start()
        self._start = time.monotonic()
        cmd = [
            sys.executable,
            "-m",
            "tooltrail.demo.fleet",
            str(self.root),
            f"--sessions={self.sessions}",
            f"--seed={self.seed}",
            f"--policy={demo_policy_path()}",
        ]
        env = {**os.environ, config.ENV_DATA: str(self.root)}
        env.pop(config.ENV_COLLECTOR_URL, None)  # the demo runs on the embedded store
        self._env = env
        try:
            # Its own session: the terminal's Ctrl-C reaches this process (and the
            # dashboard), which then stops the fleet in order, after the dashboard.
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
            self._threads = [
                threading.Thread(target=self._read_events, daemon=True),
                threading.Thread(target=self._read_errors, daemon=True),
            ]
            for t in self._threads:
                t.start()
        except BaseException:
            self._stop_approver()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the fleet's output ---------------------------------------------------------------

    def _read_events(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            kind = event.get("event")
            if kind == "started":
                self.approver.announce(str(event["session_id"]), bool(event["for_operator"]))
            elif kind == "session":
                self.report.sessions.append(str(event["session_id"]))
            elif kind == "ready":
                self._waiting = int(event["waiting"])
                self._ready.set()
            if self.on_event is not None:
                self.on_event(event)
        self._exited.set()

    def _read_errors(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    def _failed(self) -> TooltrailError:
        for t in self._threads:  # the fleet has exited: its last words are on their way
            t.join(timeout=5)
        errors = "".join(self._stderr).strip()
        return TooltrailError(f"the demo's agent fleet failed:\n{errors}")

    # -- phases ---------------------------------------------------------------------------

    def ready(self) -> DemoReport:
        """Wait until the approver's sessions have ended and the operator's held calls
        are pending (their agents waiting)."""
        deadline = time.monotonic() + self.READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.approver.error is not None:
                raise TooltrailError(
                    f"the demo approver failed: {self.approver.error}"
                ) from self.approver.error
            if self._ready.is_set() and len(self.report.left_pending) >= self._waiting:
                break
            if self._exited.is_set():
                assert self.proc is not None
                if self.proc.wait() != 0:
                    raise self._failed()
                break  # it ended by itself: nothing waits any more
            time.sleep(0.05)
        else:
            raise TooltrailError(
                f"the demo's agent fleet was not ready after {self.READY_TIMEOUT_S:.0f}s"
            )
        self._stop_approver()
        # One more session, from a client that knows nothing of tooltrail, governed from
        # outside by the gateway (its calls need no approver).
        self.report.sessions.append(gateway_session(self.root, self._env))
        self.report.seconds = time.monotonic() - self._start
        from tooltrail import analytics

        analytics.build_duckdb_file(self.root)
        return self.report

    def wait_for_operator(self, seconds: float) -> bool:
        """Keep the operator's agents waiting up to ``seconds``; True when the fleet
        finished by itself first (every call it held was decided or expired)."""
        return self._exited.wait(seconds)

    def stop(self) -> None:
        """Stop the fleet (its waiting agents give up; what they recorded lands) and the
        approver; then refresh ``tooltrail.duckdb``."""
        self._stop_approver()
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # the fleet's signal to stop (it also takes SIGTERM)
        try:
            code = proc.wait(timeout=self.STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                # Its MCP servers (in sessions of their own) exit as their stdin closes.
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its session left behind
        if code != 0:
            raise self._failed()
        from tooltrail import analytics

        analytics.build_duckdb_file(self.root)

    def operator_approvals(self) -> list[ApprovalRecord]:
        """Every request the operator's agents filed (the captain's version bump, held
        once both first calls are decided, too), as the store has it now."""
        from tooltrail.control import ControlStore

        sessions = self.approver.operator_sessions()
        with ControlStore(self.root) as store:
            return [
                r
                for r in store.list_approvals("all")
                if r.session_id in sessions and r.requested_at >= self._since
            ]

    def _stop_approver(self) -> None:
        self.approver.stop.set()
        if self.approver.is_alive():
            self.approver.join(timeout=10)


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
    """Run the fleet against real MCP servers with a demo approver, then stop it: the
    operator's held calls end abandoned. Returns what happened."""
    with DemoRun(data_dir, sessions=sessions, seed=seed, fresh=fresh, on_event=on_event) as run:
        report = run.ready()
    return report
