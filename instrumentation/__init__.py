"""tooltrail.instrumentation: runs inside agent processes (no duckdb/polars/streamlit).

One line turns it on::

    import tooltrail.instrumentation as tt
    tt.configure(data_dir="tooltrail-data", policy="policy.yaml", enforce=True)

or none at all: ``opentelemetry-instrument python agent.py`` (see docs/INSTRUMENTATION.md).
"""

from __future__ import annotations

from tooltrail.instrumentation._decision import ToolCallDenied
from tooltrail.instrumentation._session import Session, current_session, session, use_session
from tooltrail.instrumentation.config import configure
from tooltrail.instrumentation.decorator import tool
from tooltrail.instrumentation.mcp import McpInstrumentor
from tooltrail.instrumentation.sampling import ToolSpanSampler
from tooltrail.instrumentation.version import __version__

__all__ = [
    "McpInstrumentor",
    "Session",
    "ToolCallDenied",
    "ToolSpanSampler",
    "__version__",
    "configure",
    "current_session",
    "session",
    "tool",
    "use_session",
]
