"""Which hosts count as "this machine": loopback rules for base_url checks and the vLLM bind.

A managed vLLM server is bound to the host its ``base_url`` names, so the probes that go to
``base_url`` reach it; that host must be a loopback address, because vLLM's sleep and dev
endpoints have no authentication. Two providers collide on a port whenever both hosts mean this
machine, however they are spelled (``127.0.0.1``, ``localhost``, ``0.0.0.0``, ``::1``).
"""

from __future__ import annotations

import ipaddress

LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
LOCAL_MACHINE = "<this machine>"
"""The normalised host of every loopback or wildcard spelling, for port-collision checks."""


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 (and ::ffff:127.x) or a localhost name."""
    if not host:
        return False
    if host.lower().rstrip(".") in LOCALHOST_NAMES:
        return True
    ip = _ip(host)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def collision_host(host: str | None) -> str | None:
    """``host`` normalised for "same port?" checks: every spelling of this machine is one value.

    A server bound to ``0.0.0.0`` or ``::`` holds the port on loopback too, so the wildcard
    addresses count as this machine as well.
    """
    if host is None:
        return None
    ip = _ip(host)
    if is_loopback(host) or (ip is not None and ip.is_unspecified):
        return LOCAL_MACHINE
    return str(ip) if ip is not None else host.lower().rstrip(".")


def bind_address(host: str | None) -> str:
    """The ``--host`` a managed vLLM server gets for its base_url host.

    An IP literal is used exactly (``[::1]`` binds ``::1``); a localhost name binds
    ``127.0.0.1`` (localhost resolves to it everywhere, and the probe's resolver falls back to
    it when ``::1`` comes first). Validation refuses non-loopback hosts before this is reached.
    """
    ip = _ip(host or "")
    if ip is not None:
        return str(ip)
    return "127.0.0.1"
