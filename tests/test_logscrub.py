"""Every process that uses tooltrail scrubs its tooltrail.* log records, not only agents:
a collector or CLI process never imports the instrumentation."""

from __future__ import annotations

import subprocess
import sys

TOKEN = "ghp_" + "Zq7" * 12

SCRIPT = f"""
import logging, sys
import tooltrail.collector.writer  # a collector-side import; no instrumentation
assert "tooltrail.instrumentation" not in sys.modules
logging.basicConfig(stream=sys.stdout, format="%(name)s %(message)s")
logging.getLogger("tooltrail.collector.server").error("landing failed for %s", "{TOKEN}")
logging.getLogger("hostapp").error("host record %s", "{TOKEN}")
"""


def test_a_collector_process_scrubs_its_log_records_without_the_instrumentation() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    collector_line, host_line = out.splitlines()
    assert collector_line.startswith("tooltrail.collector.server landing failed for [REDACTED:")
    assert TOKEN not in collector_line
    assert host_line == f"hostapp host record {TOKEN}"  # others' records are untouched
