"""Small network helpers shared by the proxy, the control plane and the simulator."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (IPv6 scope ids and IPv4-mapped IPv6
    addresses included); False for anything else, including names that don't parse."""
    if not host:
        return False
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback
