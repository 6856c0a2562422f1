"""An instrumented agent process for the signed-decision tests, driven line by line.

``tt.configure(data_dir, policy, enforce=True)`` (the default broker on the data directory,
or on ``$TOOLTRAIL_COLLECTOR_URL`` when set; session control on); one session with the
given id. Each stdin line is a command:

* ``{"id": ..., "call": "deploy" | "status", "target": ...}``: run the tool in a thread and
  print ``{"id", "ran": bool, "reason": ...}`` when it ends;
* ``{"id": ..., "self_approve": true, "data": DIR}``: start a thread that approves, through
  the library (``ControlStore.decide``) as "alice", every pending request it finds in DIR
  (default: DATA_DIR), as a compromised agent would; it prints ``{"id", "self_approve":
  [errors...]}`` after the first attempt.

Prints ``{"ready": true}`` first. Exits at the end of stdin once every call ended.

Usage: python signed_agent.py DATA_DIR POLICY SESSION_ID
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import tooltrail.instrumentation as tt
from tooltrail.control import ControlStore

_out = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    with _out:
        print(json.dumps(obj), flush=True)


@tt.tool
def deploy(target: str) -> str:
    return f"deployed {target}"


@tt.tool
def status(target: str) -> str:
    return "ok"


TOOLS = {"deploy": deploy, "status": status}


def run_call(session_id: str, command: dict[str, Any]) -> None:
    with tt.session(session_id=session_id, trigger="manual"):
        try:
            TOOLS[command["call"]](command["target"])
        except tt.ToolCallDenied as e:
            emit({"id": command["id"], "ran": False, "reason": e.reason})
            return
    emit({"id": command["id"], "ran": True, "reason": None})


def self_approve(data_dir: str, command: dict[str, Any]) -> None:
    """What a compromised agent thread can do with the library: approve its own calls."""
    errors: list[str] = []
    deadline = time.monotonic() + 10
    try:
        with ControlStore(command.get("data") or data_dir) as store:
            while time.monotonic() < deadline and not errors:
                for record in store.list_approvals("pending"):
                    try:
                        store.decide(record.approval_id, "approved", by="alice", role="admin")
                        errors.append("approved")
                    except Exception as e:
                        errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.02)
    except Exception as e:  # the store cannot even be opened (another account's)
        errors.append(f"{type(e).__name__}: {e}")
    emit({"id": command["id"], "self_approve": errors})


def main(data_dir: str, policy: str, session_id: str) -> None:
    tt.configure(data_dir=data_dir, policy=policy, enforce=True, agent_name="signed-agent")
    emit({"ready": True})
    threads = []
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("self_approve"):
            target: Any = self_approve
            args: tuple[Any, ...] = (data_dir, command)
        else:
            target, args = run_call, (session_id, command)
        thread = threading.Thread(target=target, args=args)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(*sys.argv[1:4])
