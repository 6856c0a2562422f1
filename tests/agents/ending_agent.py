"""An agent for the session-end tests: ``python ending_agent.py MODE SESSION_ID``.

It lands in ``$TOOLTRAIL_DATA`` through tooltrail's own exporter, with the real OTel SDK:

* ``ok``: a ``tt.session`` (tags nightly, release) with one tool call, left normally;
* ``raise``: the same, but the body raises (the process still exits 0);
* ``hang``: one tool call, flushed, then ``ready`` on stdout and sleep (the test kills it);
* ``trace``: an agent span, a GenAI ``chat`` span (semconv attribute names, prompts and
  outputs recorded), a tool call, then ``step`` on stdout; after a line on stdin a second
  ``chat`` and a second tool call, and the final output.
"""

from __future__ import annotations

import json
import sys
import time

from opentelemetry import trace

import tooltrail.instrumentation as tt


def chat(tracer: trace.Tracer, session_id: str, n: int, question: str, answer: str) -> None:
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 100 + n,
        "gen_ai.usage.output_tokens": 10 + n,
        "gen_ai.conversation.id": session_id,
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": question}]}]
        ),
        "gen_ai.output.messages": json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]
        ),
    }
    with tracer.start_as_current_span("chat gpt-4o", attributes=attributes):
        time.sleep(0.002)


def main() -> None:
    mode, session_id = sys.argv[1], sys.argv[2]
    conf = tt.configure(agent_name="ending-bot", enforce=False)
    tracer = trace.get_tracer("ending-agent")

    @tt.tool
    def add(a: int, b: int) -> int:
        return a + b

    if mode in ("ok", "raise"):
        try:
            with tt.session(session_id=session_id, tags=["nightly", "release"]):
                add(1, 2)
                if mode == "raise":
                    raise RuntimeError("the agent's own code failed")
        except RuntimeError:
            pass
    elif mode == "hang":
        with tt.session(session_id=session_id, tags=["doomed"]):
            add(1, 2)
            conf.tracer_provider.force_flush()
            print("ready", flush=True)
            time.sleep(600)
    elif mode == "trace":
        agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": session_id}
        with tt.session(session_id=session_id) as s:
            with tracer.start_as_current_span("invoke_agent ending-bot", attributes=agent):
                chat(tracer, session_id, 1, "what is 1 + 2?", "I will call add.")
                add(1, 2)
                conf.tracer_provider.force_flush()
                print("step", flush=True)
                sys.stdin.readline()
                chat(tracer, session_id, 2, "add returned 3", "The answer is 3.")
                add(3, 4)
            s.set_output("The answer is 3.")
    conf.tracer_provider.force_flush()


if __name__ == "__main__":
    main()
