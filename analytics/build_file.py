"""``python -m tooltrail.analytics.build_file DATA_DIR``: build ``DATA_DIR/tooltrail.duckdb``
unless it is current; started in the background by a writer's first landing (see
tooltrail.collector.duckdb_file). One build at a time per directory (a lock file; a
second builder leaves at once). Exit status 0 when the file is current afterwards or
another builder holds the lock, 1 on failure (the reason on stderr, one line).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path

from tooltrail.analytics.db import build_duckdb_file
from tooltrail.analytics.engine import data_root
from tooltrail.collector.duckdb_file import LOCK_FILE, is_current
from tooltrail.errors import TooltrailError

_log = logging.getLogger("tooltrail.analytics.build_file")


def build_if_stale(data_dir: str | os.PathLike[str]) -> bool:
    """Build the file unless it is current or another builder is at it; True if built."""
    root = data_root(data_dir)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another builder is at it
        if is_current(root):
            return False
        build_duckdb_file(root)
        return True
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    logging.basicConfig(format="tooltrail: %(message)s", level=logging.WARNING)
    if len(argv) != 1:
        _log.error("usage: python -m %s DATA_DIR", __spec__.name if __spec__ else __name__)
        return 2
    try:
        build_if_stale(argv[0])
    except (TooltrailError, OSError) as e:
        _log.error("could not build %s: %s", Path(argv[0]) / "tooltrail.duckdb", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
