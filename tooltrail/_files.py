"""Small file helpers shared by the stores that keep one JSON document per file."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def write_json_atomically(path: Path, doc: Any, mode: int) -> Path:
    """Write ``doc`` to ``path`` whole: a temporary file created with ``mode`` (so a
    secret is never readable by others, even for a moment), renamed over the old one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
