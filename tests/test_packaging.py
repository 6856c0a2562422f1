"""Building tooltrail's wheel: no setuptools warning, and every SQL file installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_the_wheel_builds_without_warnings_and_carries_every_sql_file(tmp_path: Path) -> None:
    # Built from a copy of the tracked files, so the build leaves nothing in the checkout.
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    src = tmp_path / "src"
    for name in listed:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", str(src), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "Package would be ignored" not in log, log[-3000:]
    (wheel,) = tmp_path.glob("tooltrail-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        f"tooltrail/analytics/sql/{p.name}" for p in (ROOT / "analytics" / "sql").glob("*.sql")
    }
    assert wanted and wanted <= names
