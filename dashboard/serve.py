"""``python -m tooltrail.dashboard.serve run ENTRY ...``: the Streamlit server of
``tooltrail dashboard``, which stops when that command's process is gone.

``tooltrail dashboard`` forwards Ctrl-C, SIGTERM and SIGHUP to the server, but a command
killed outright (``kill -9``, the OOM killer) cannot: the server would live on, serving the
approve / deny and pause / cancel buttons to whoever reaches the port. So the server
watches its parent and, once re-parented, stops itself the way SIGTERM stops it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Final

_POLL_S: Final = 0.5


def _stop_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # Streamlit's own clean shutdown


def main() -> None:
    parent = os.getppid()
    if parent != 1:  # started by init: there is no command to outlive
        threading.Thread(
            target=_stop_with_parent, args=(parent,), name="tooltrail-parent-watch", daemon=True
        ).start()
    from streamlit.web.cli import main as streamlit_main

    # The server sees the same command line as `python -m streamlit ...` gives it.
    streamlit_main(prog_name="streamlit")


if __name__ == "__main__":
    main()
