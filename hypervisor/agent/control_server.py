"""The control API's server side: JSON lines on the agent's private endpoint (protocol and client
in hypervisor/control.py). It parses a request, hands the operation to the agent and writes the
one-line answer; `watch` streams the status board."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from hypervisor.agent.status_board import StatusBoard
from hypervisor.control import OPS, decode, encode, is_pipe
from hypervisor.errors import ControlError, PinnaceError
from hypervisor.unix_socket import remove_stale_socket

log = logging.getLogger("pinnace.agent")

Operation = Callable[[str], Awaitable[None]]  # "stop" | "restart" | "reset" | "resume"


class ControlServer:
    def __init__(self, board: StatusBoard, operate: Operation) -> None:
        self.board, self.operate = board, operate
        self._clients: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            line = await reader.readline()
            if not line:
                return
            try:
                op = str(decode(line).get("op"))
            except ControlError as exc:
                writer.write(encode({"ok": False, "error": str(exc)}))
                return
            if op not in OPS:
                writer.write(encode({"ok": False, "error": f"unknown operation {op!r}"}))
            elif op == "watch":
                await self._stream(writer)
            elif op == "status":
                writer.write(encode({"ok": True, "result": self.board.status.to_dict()}))
            else:
                try:
                    await self.operate(op)
                    writer.write(encode({"ok": True, "result": self.board.status.to_dict()}))
                except PinnaceError as exc:
                    writer.write(encode({"ok": False, "error": str(exc)}))
                except Exception as exc:  # noqa: BLE001 - the client gets an answer, never a closed socket
                    log.exception("%s failed", op)
                    writer.write(encode({"ok": False, "error": f"{op} failed: {exc}"}))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def finish_answers(self, timeout: float = 3.0) -> None:
        """Let requests already answered (a stop's own reply) reach their clients before the
        agent exits; watchers are left to the board's close."""
        pending = [t for t in self._clients if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        queue = self.board.watch()
        try:
            while (status := await queue.get()) is not None:
                writer.write(encode({"event": "status", "result": status.to_dict()}))
                await writer.drain()
        finally:
            self.board.unwatch(queue)


async def serve(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                address: Path | str) -> asyncio.AbstractServer:
    """Listen on the agent's control endpoint: an owner-only named pipe, or a unix socket (0600
    in the 0700 runtime dir) that a live agent must not already serve (the engine forwarder's
    own check)."""
    if is_pipe(address):
        from hypervisor.forward_windows import start_pipe_server

        return await start_pipe_server(handle, str(address))  # type: ignore[return-value]
    path = Path(address)
    remove_stale_socket(path)  # a crashed agent's leftover goes; a live agent's socket is refused
    server = await asyncio.start_unix_server(handle, path=str(path))
    path.chmod(0o600)
    return server
