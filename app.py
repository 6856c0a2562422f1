"""tooltrail's Streamlit dashboard: ``streamlit run app.py [-- --data DIR --policy FILE]``.

The data directory comes from ``--data`` or ``$TOOLTRAIL_DATA`` (default
./tooltrail-data), the active policy from ``--policy`` or ``$TOOLTRAIL_POLICY``. The
router and pages live in ``tooltrail.dashboard`` (dashboard/), so an installed wheel runs
the same app: ``tooltrail dashboard``.
"""

from __future__ import annotations

from tooltrail.dashboard.router import main

main()
