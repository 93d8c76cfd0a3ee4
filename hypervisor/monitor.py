"""A thin wrapper over qemu.qmp's QMPClient: connect with retry, powerdown, quit,
human-monitor commands (hostfwd), and the event stream that drives the lifecycle.

QEMU's monitor is a unix socket on Unix hosts and a named pipe QEMU creates on Windows (see
spec.qmp_argv): qemu.qmp only speaks sockets, so the pipe's client end is opened here (on asyncio's
ProactorEventLoop) and handed to qemu.qmp as the stream pair everything after the connect runs on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError, Runstate

from hypervisor import platform as host_platform
from hypervisor.errors import MonitorError
from hypervisor.platform.windows import NamedPipeAddress as NamedPipeAddress  # re-exported: QMP's Windows address
from hypervisor.platform.windows import named_pipe_server_pid

log = logging.getLogger(__name__)

LIFECYCLE_EVENTS = ("SHUTDOWN", "RESET", "STOP", "RESUME", "POWERDOWN", "BLOCK_IO_ERROR")
READ_LIMIT = 10 * 1024 * 1024  # qemu.qmp's own default (libvirt's): the most one QMP message may take

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
PipeConnector = Callable[[NamedPipeAddress, int], Awaitable[Streams]]
"""Opens the client end of a named pipe as an asyncio stream pair (the int: the reader's limit)."""


def check_pipe_server(address: NamedPipeAddress, actual_pid: int) -> None:
    """Refuse a pipe served by anyone but the QEMU the address names (someone who created the
    name before QEMU did would otherwise get our commands and could answer them)."""
    if address.server_pid is not None and actual_pid != address.server_pid:
        raise MonitorError(
            f"{address.name} is served by process {actual_pid}, not by QEMU (pid "
            f"{address.server_pid}): refusing to use it (another program created it first)"
        )


def pipe_server_pid(transport: asyncio.BaseTransport) -> int:
    """The process serving a pipe transport of the ProactorEventLoop (its extra "pipe" is asyncio's
    PipeHandle). Windows only."""
    handle = getattr(transport.get_extra_info("pipe"), "handle", None)
    if handle is None:
        raise OSError(f"no pipe handle on {transport!r}")
    return named_pipe_server_pid(handle)


async def open_named_pipe(
    address: NamedPipeAddress,
    limit: int,
    *,
    server_pid_of: Callable[[Any], int] = pipe_server_pid,
) -> Streams:
    """The client end of a local named pipe as asyncio streams, as asyncio.open_connection builds
    them for a socket. When the address names its server, the server is checked before a byte is
    sent. Needs Windows and its default event loop (the ProactorEventLoop)."""
    loop = asyncio.get_running_loop()
    create = getattr(loop, "create_pipe_connection", None)
    if not host_platform.current().named_pipes or create is None:
        raise MonitorError(f"cannot open {address.name}: named pipes need Windows and asyncio's ProactorEventLoop")
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create(lambda: protocol, address.name)
    try:
        if address.server_pid is not None:
            try:
                actual = server_pid_of(transport)
            except OSError as exc:
                raise MonitorError(f"cannot tell which process serves {address.name}", exc) from exc
            check_pipe_server(address, actual)
    except BaseException:
        transport.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class _QMPClient(QMPClient):
    """QMPClient that also connects to a NamedPipeAddress through `pipe_connector`; from the
    greeting on (negotiation, reader and writer tasks, events) everything is qemu.qmp's own."""

    def __init__(self, name: str, pipe_connector: PipeConnector) -> None:
        super().__init__(name)
        self._pipe_connector = pipe_connector

    async def _do_connect(self, address: Any, ssl: Any = None) -> None:
        if not isinstance(address, NamedPipeAddress):
            await super()._do_connect(address, ssl)
            return
        # What AsyncProtocol._do_connect does for a socket (qemu.qmp has no hook for other
        # transports): enter CONNECTING, then give its reader and writer the pipe's streams.
        self._set_state(Runstate.CONNECTING)
        await asyncio.sleep(0)
        self._reader, self._writer = await self._pipe_connector(address, getattr(self, "readbuflen", READ_LIMIT))


class Monitor:
    PipeAddress = NamedPipeAddress  # QMP's Windows address, for callers that import only Monitor

    def __init__(
        self,
        socket_path: Path | NamedPipeAddress,
        name: str = "pinnace",
        pipe_connector: PipeConnector = open_named_pipe,
    ) -> None:
        self.socket_path = socket_path
        self._client = _QMPClient(name, pipe_connector)
        self._listener = EventListener(LIFECYCLE_EVENTS)
        self._client.register_listener(self._listener)
        self.connected = False

    async def connect(self, timeout: float = 10.0, gone: Callable[[], str | None] = lambda: None) -> None:
        """QEMU creates the socket or pipe a moment after it starts: retry until `timeout`, or until
        `gone()` names why QEMU exited (its own error beats "connection refused"). A refusal of our
        own (a pipe served by another process; no pipes on this host) ends it at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: BaseException | None = None
        address = self.socket_path
        target = address if isinstance(address, NamedPipeAddress) else str(address)
        protocol_log = logging.getLogger("qemu.qmp.protocol")
        level = protocol_log.level
        protocol_log.setLevel(logging.CRITICAL)  # qemu.qmp logs every refused attempt as an ERROR
        try:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    # Bounded per attempt too: asyncio retries a busy pipe without end.
                    await asyncio.wait_for(self._client.connect(target), remaining)
                    self.connected = True
                    return
                except ConnectError as exc:
                    if isinstance(exc.exc, MonitorError):
                        raise exc.exc from exc
                    last = exc
                except OSError as exc:  # TimeoutError included
                    last = exc
                reason = gone()
                if reason:
                    raise MonitorError(reason) from last
                await asyncio.sleep(0.05)
        finally:
            protocol_log.setLevel(level)
        hint = ""
        if isinstance(address, NamedPipeAddress):
            hint = (
                " (QEMU serves this pipe to one client for as long as it runs: once an earlier agent, or "
                "another program, has had it, the monitor cannot be reached again)"
            )
        raise MonitorError(f"cannot connect to QEMU's monitor at {address}{hint}", last)

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

    async def cont(self) -> None:
        """Resume a paused VM (after a full disk has room again, or on the user's start)."""
        await self.execute("cont")

    async def run_state(self) -> str:
        """QEMU's run state: "running", "paused", "io-error", "suspended", ..."""
        info = await self.execute("query-status")
        return str((info or {}).get("status", ""))

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(name, data) of each lifecycle event, in order."""
        async for event in self._listener:
            data = event.get("data")
            yield str(event["event"]), dict(data) if isinstance(data, dict) else {}

    async def close(self) -> None:
        if self.connected:
            self.connected = False
            try:
                await self._client.disconnect()
            except (QMPError, OSError, EOFError):
                pass
