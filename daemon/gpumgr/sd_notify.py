"""systemd's notify protocol (``Type=notify``): READY=1, STATUS=…, WATCHDOG=1, STOPPING=1.

A datagram to ``$NOTIFY_SOCKET`` is the whole protocol (see sd_notify(3)); a dozen lines do not
justify a dependency. Children never inherit the socket: the supervisor strips ``NOTIFY_SOCKET``
and ``WATCHDOG_*`` from their environment, or systemd would take a child's message for ours.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping


class Notifier:
    """Sends notifications when running under systemd; does nothing otherwise."""

    def __init__(self, env: Mapping[str, str]) -> None:
        """``env``: the daemon's environment as read at its start (``gpumgr.runtime``)."""
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self._address = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s: float | None = int(usec) / 1e6 / 2 if watchdog_for_us else None
        """Ping at half of systemd's WatchdogSec, as sd_watchdog_enabled(3) recommends."""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        if self._address is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto("\n".join(fields).encode(), self._address)
            except OSError:
                return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")


CHILD_ENV_DROP_PREFIXES = (
    "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_FD", "LISTEN_PID", "CREDENTIALS_DIRECTORY",
)
"""systemd's notify socket, watchdog and socket activation belong to gpumgr; a child that inherits
them could send READY/WATCHDOG on the daemon's behalf (and hide a hung daemon). The credentials
directory holds gpumgr's secrets (``gpumgr.secrets``): a vLLM child gets only its own key."""


async def watchdog_loop(notifier: Notifier) -> None:
    """Ping systemd's watchdog from the event loop: a wedged loop stops the pings, and systemd
    restarts the daemon (its engines outlive it and are adopted)."""
    interval_s = notifier.watchdog_interval_s
    if not interval_s:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the variables that speak for the daemon's unit to systemd."""
    return {k: v for k, v in env.items() if not k.startswith(CHILD_ENV_DROP_PREFIXES)}
