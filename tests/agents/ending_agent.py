"""An agent for the session-end tests: ``python ending_agent.py MODE SESSION_ID [URL]``.

It lands in ``$TOOLTRAIL_DATA`` through tooltrail's own exporter, with the real OTel SDK
(and, given a collector's URL, sends every span there over OTLP/HTTP too):

* ``ok``: a ``tt.session`` (tags nightly, release) with one tool call, left normally;
* ``raise``: the same, but the body raises (the process still exits 0);
* ``hang``: one tool call, flushed, then ``ready`` on stdout and sleep (the test kills it);
* ``trace``: an agent span, a GenAI ``chat`` span (semconv attribute names, prompts and
  outputs recorded), a tool call, then ``step`` on stdout; after a line on stdin a second
  ``chat`` and a second tool call, and the final output.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Sequence

from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

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


class _OtlpJsonFile(SpanExporter):
    """Writes each batch as one line of OTLP JSON, as the OTel Collector's file exporter
    does (hex ids): what ``tooltrail ingest`` reads."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        doc = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = base64.b64decode(span[key]).hex()
        with open(self.path, "a") as out:
            out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        return SpanExportResult.SUCCESS


def _otlp_to(url: str) -> None:
    """Also send every span over OTLP/HTTP to ``url`` (a ``tooltrail collect``), or write
    it as OTLP JSON to the file a ``file:`` URL names."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider()
    exporter: SpanExporter
    if url.startswith("file:"):
        exporter = _OtlpJsonFile(url.removeprefix("file:"))
    else:
        exporter = OTLPSpanExporter(f"{url}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def main() -> None:
    mode, session_id = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:  # a collector's URL: its spans go there too
        _otlp_to(sys.argv[3])
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
