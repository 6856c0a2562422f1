"""The script ``tooltrail dashboard`` hands to ``streamlit run`` (see ``launch``).

Streamlit puts the script's directory first on ``sys.path``; this package's module names
(``data``, ``ui``, ...) must not shadow top-level packages, so it is taken off again. Every
import here is absolute.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != _HERE]

from tooltrail.dashboard.router import main  # noqa: E402 - after the sys.path fix above

main()
