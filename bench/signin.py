"""What dashboard sign-in costs per run, measured in one run.

    python bench/signin.py [--runs 15] [--pending 20]

Two data directories with the same pending approval requests (no spans): one in
single-user mode (a typed name), one with access control on and a local account signed
in. The Approvals page is rendered warm (caches filled: what a click or the
auto-refresh costs) through ``streamlit.testing.v1.AppTest``, alternating between the
two, so the ratio is what finding the identity again on every run (and per card) adds.
Also timed: one local sign-in (scrypt, once per browser session) and the identity check
alone (``auth.current``'s store reads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from tooltrail import access
from tooltrail.control import ApprovalRequest, ControlStore
from tooltrail.dashboard import ENTRY


def _file_requests(root: Path, count: int) -> None:
    now = time.time()
    with ControlStore(root) as store:
        for i in range(count):
            store.file_request(
                ApprovalRequest(
                    tool_name="git_commit",
                    arguments={"repo_path": f"/srv/repos/repo-{i:02d}", "message": f"fix {i}"},
                    timeout_s=86_400,
                    session_id=f"sess-{i:03d}",
                    agent_name="agent-00",
                    policy_rule="commit-to-default-branch",
                    approvers=("*",),
                    blast_radius="Medium",
                ),
                now=now - 60 * (count - i),
            )


def _app(root: Path) -> AppTest:
    os.environ["TOOLTRAIL_DATA"] = str(root)
    st.cache_data.clear()
    st.cache_resource.clear()
    return AppTest.from_file(str(ENTRY), default_timeout=300).run()


def _warm_ms(at: AppTest) -> float:
    start = time.perf_counter()
    at.run(timeout=300)
    if at.exception:
        raise RuntimeError(str(at.exception[0].value))
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pending", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tt-bench-signin-") as tmp:
        single, signed = Path(tmp, "single"), Path(tmp, "signed")
        for root in (single, signed):
            root.mkdir()
            _file_requests(root, args.pending)
        with access.AccessStore(signed) as store:
            _, credential = store.add("alice", "user", "admin", by=None)

        a = _app(single)
        a.sidebar.text_input(key="operator").input("alice").run()
        a.switch_page("page_approvals.py").run()
        b = _app(signed)
        start = time.perf_counter()
        b.text_input(key="signin_name").input("alice")
        b.text_input(key="signin_credential").input(credential)
        b.button(key="signin-submit").click().run()
        sign_in_ms = (time.perf_counter() - start) * 1000
        b.switch_page("page_approvals.py").run()
        assert len([x for x in b.button if x.key and "approve" in x.key]) >= args.pending

        single_ms, signed_ms = [], []
        for _ in range(args.runs):  # alternating: the machine's load hits both alike
            os.environ["TOOLTRAIL_DATA"] = str(single)
            single_ms.append(_warm_ms(a))
            os.environ["TOOLTRAIL_DATA"] = str(signed)
            signed_ms.append(_warm_ms(b))

        check = []
        for _ in range(200):
            t = time.perf_counter()
            with access.AccessStore(signed) as store:
                store.has_users()
                store.row_by_key(access.parse_credential(credential)[1])
            check.append((time.perf_counter() - t) * 1000)

    s, g = statistics.median(single_ms), statistics.median(signed_ms)
    print(f"Approvals page, {args.pending} pending, warm rerun, median of {args.runs}:")
    print(f"  single-user (typed name)  {s:8.1f} ms")
    print(f"  signed in (local account) {g:8.1f} ms   x{g / s:.2f}")
    print(
        f"identity check (store open + row read), median of 200: {statistics.median(check):.2f} ms"
    )
    print(f"local sign-in (scrypt verification + a run): {sign_in_ms:.0f} ms, once per session")


if __name__ == "__main__":
    sys.exit(main())
