"""A process that exports tool spans through the real SDK + tooltrail exporter.

    python export_loop.py DATA_DIR SPANS [--forever] [--tag T]

Used by the concurrency test (N processes into one directory) and the crash test
(killed with SIGKILL mid-export).
"""

from __future__ import annotations

import json
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tooltrail import semconv as sc
from tooltrail.collector import TooltrailSpanExporter


def main() -> None:
    data, count = sys.argv[1], int(sys.argv[2])
    forever = "--forever" in sys.argv
    tag = sys.argv[sys.argv.index("--tag") + 1] if "--tag" in sys.argv else "p"
    provider = TracerProvider(resource=Resource.create({"service.name": f"agent-{tag}"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            TooltrailSpanExporter(data_dir=data),
            max_queue_size=100_000,
            max_export_batch_size=512,
            schedule_delay_millis=50,
        )
    )
    tracer = provider.get_tracer("export-loop")
    i = 0
    while forever or i < count:
        attrs = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_status",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"repo_path": f"/r/{tag}", "n": i}),
            sc.TT_SESSION_ID: f"{tag}-{i % 10}",
            sc.TT_SEQUENCE: i,
        }
        with tracer.start_as_current_span(f"execute_tool git_status {tag}-{i}", attributes=attrs):
            pass
        i += 1
    provider.shutdown()
    print(json.dumps({"tag": tag, "spans": i}))


if __name__ == "__main__":
    main()
