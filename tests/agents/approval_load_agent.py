"""Hundreds of held calls at once from one async agent, for the load test.

It turns tooltrail on with ``configure(data_dir, policy, enforce=True)`` and calls the
``@tool`` function ``release(n)`` for n in 0..N-1, all at once (one task each, spread over
five sessions), so N approval requests are pending together in ``<data>/control.sqlite``.
When every call has ended it prints one JSON object: ``{"results": {n: [outcome, reason]}}``
with outcome ``ran`` or ``denied``, and the process CPU seconds it used.

Usage: python approval_load_agent.py DATA_DIR POLICY N
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import tooltrail.instrumentation as tt

SESSIONS = 5


@tt.tool
async def release(n: int) -> int:
    return n


async def one(n: int) -> tuple[int, str, str | None]:
    with tt.session(session_id=f"load-{n % SESSIONS}", agent_name="load-agent"):
        try:
            await release(n)
        except tt.ToolCallDenied as e:
            return n, "denied", e.reason
        return n, "ran", None


async def main(count: int) -> None:
    done = await asyncio.gather(*(one(n) for n in range(count)))
    results = {str(n): [outcome, reason] for n, outcome, reason in done}
    print(json.dumps({"results": results, "cpu_s": time.process_time()}), flush=True)


if __name__ == "__main__":
    data_dir, policy, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tt.configure(data_dir=data_dir, policy=policy, enforce=True)
    asyncio.run(main(count))
