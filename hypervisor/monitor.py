"""A thin wrapper over qemu.qmp's QMPClient: connect with retry, powerdown, quit,
human-monitor commands (hostfwd), and the event stream that drives the lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError

from hypervisor.errors import MonitorError

log = logging.getLogger(__name__)

LIFECYCLE_EVENTS = ("SHUTDOWN", "RESET", "STOP", "RESUME", "POWERDOWN")


class Monitor:
    def __init__(self, socket_path: Path | tuple[str, int], name: str = "pinnace") -> None:
        self.socket_path = socket_path
        self._client = QMPClient(name)
        self._listener = EventListener(LIFECYCLE_EVENTS)
        self._client.register_listener(self._listener)
        self.connected = False

    async def connect(self, timeout: float = 10.0, gone: Callable[[], str | None] = lambda: None) -> None:
        """QEMU creates the socket a moment after it starts: retry until `timeout`, or until
        `gone()` names why QEMU exited (its own error beats "connection refused")."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: BaseException | None = None
        protocol_log = logging.getLogger("qemu.qmp.protocol")
        level = protocol_log.level
        protocol_log.setLevel(logging.CRITICAL)  # qemu.qmp logs every refused attempt as an ERROR
        try:
            while loop.time() < deadline:
                try:
                    address = self.socket_path
                    await self._client.connect(address if isinstance(address, tuple) else str(address))
                    self.connected = True
                    return
                except (ConnectError, OSError) as exc:
                    last = exc
                    reason = gone()
                    if reason:
                        raise MonitorError(reason) from exc
                    await asyncio.sleep(0.05)
        finally:
            protocol_log.setLevel(level)
        raise MonitorError(f"cannot connect to QEMU's monitor at {self.socket_path}", last)

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return await self._client.execute(command, arguments)
        except ExecuteError as exc:
            raise MonitorError(f"QMP {command} refused", exc) from exc
        except (QMPError, OSError, EOFError) as exc:
            raise MonitorError(f"QMP {command} failed", exc) from exc

    async def powerdown(self) -> None:
        await self.execute("system_powerdown")

    async def quit(self) -> None:
        try:
            await self.execute("quit")
        except MonitorError:
            pass  # QEMU may close the socket before it answers

    async def hmp(self, command_line: str) -> str:
        """A human-monitor command (e.g. hostfwd_add); QEMU reports its errors as text."""
        out = await self.execute("human-monitor-command", {"command-line": command_line})
        return str(out or "")

    async def events(self) -> AsyncIterator[str]:
        async for event in self._listener:
            yield str(event["event"])

    async def close(self) -> None:
        if self.connected:
            self.connected = False
            try:
                await self._client.disconnect()
            except (QMPError, OSError, EOFError):
                pass
