"""Small network helpers shared by the servers (collector, gateway, dashboard) without
pulling in any of them (the dashboard command must not import pyarrow to check a bind)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, an IPv4 or IPv6 address, brackets allowed) is loopback.

    Example:

        is_loopback("127.0.0.1") and is_loopback("[::1]") and not is_loopback("0.0.0.0")
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["is_loopback"]
