"""Windows: serve a named pipe (docker's npipe://) and relay each client over its own SSH channel.

Import only on Windows (forward.py never imports this module; the Windows platform strategy hands
out its forwarder). The pipe is created with an owner-only DACL (hypervisor.platform.windows),
FILE_FLAG_FIRST_PIPE_INSTANCE (no squatting on an existing name) and PIPE_REJECT_REMOTE_CLIENTS.
asyncio's ProactorEventLoop drives the overlapped pipe I/O; its public start_serving_pipe() cannot
set a security descriptor, so `_serve_loop` reuses the same proactor calls it makes
(`_proactor.accept_pipe`, `_make_duplex_pipe_transport`) with our own handle. Byte-mode pipes have
no half-close: a client EOF means the client is gone, and a channel EOF closes the pipe after the
buffered data is written.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from hypervisor import platform as host_platform
from hypervisor.errors import ForwardError
from hypervisor.platform import windows
from hypervisor.platform.windows import PIPE_PREFIX, current_user_sid

log = logging.getLogger(__name__)

_HIGH_WATER = 1 << 20  # client bytes queued for the channel before we stop reading the pipe
BUFFER_SIZE = 256 * 1024


def owner_only_sddl(sid: str, inherit: bool = False) -> str:
    """The platform's owner-only DACL for `sid`; a malformed SID is a ForwardError here."""
    try:
        return windows.owner_only_sddl(sid, inherit)
    except ValueError as e:
        raise ForwardError(str(e)) from e


# --- Win32 via ctypes (only ever called on Windows) ---------------------------------------------


def _create_pipe_instance(path: str, sddl: str, first: bool) -> int:
    """CreateNamedPipeW with our DACL; returns the overlapped handle."""
    import ctypes
    from ctypes import wintypes

    advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)

    class SecurityAttributes(ctypes.Structure):
        _fields_ = [
            ("nLength", wintypes.DWORD),
            ("lpSecurityDescriptor", ctypes.c_void_p),
            ("bInheritHandle", wintypes.BOOL),
        ]

    descriptor = ctypes.c_void_p()
    if not advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
        sddl, 1, ctypes.byref(descriptor), None
    ):
        raise ctypes.WinError(ctypes.get_last_error())
    try:
        attrs = SecurityAttributes(ctypes.sizeof(SecurityAttributes), descriptor, False)
        open_mode = 0x00000003 | 0x40000000  # PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED
        if first:
            open_mode |= 0x00080000  # FILE_FLAG_FIRST_PIPE_INSTANCE
        pipe_mode = 0x00000008  # PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS
        kernel32.CreateNamedPipeW.restype = wintypes.HANDLE
        handle = kernel32.CreateNamedPipeW(
            path, open_mode, pipe_mode, 255, BUFFER_SIZE, BUFFER_SIZE, 0, ctypes.byref(attrs)
        )
        if handle in (None, wintypes.HANDLE(-1).value):
            raise ctypes.WinError(ctypes.get_last_error())
        return handle
    finally:
        kernel32.LocalFree(descriptor)


class _PipeRelay(asyncio.Protocol):
    """One pipe client <-> one SSH channel; blocking channel calls run on two helper threads."""

    def __init__(self, forwarder: NamedPipeForwarder) -> None:
        self._fwd = forwarder
        self._loop = forwarder._loop
        self._transport: asyncio.Transport | None = None
        self._chan: Any = None
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._can_write = threading.Event()
        self._can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._fwd._track(self, +1)
        transport.pause_reading()  # type: ignore[attr-defined]
        threading.Thread(target=self._open, daemon=True, name=f"npipe-{self._fwd.name}").start()

    def _open(self) -> None:
        try:
            self._chan = self._fwd._open_channel()
        except Exception as e:  # refuse promptly, never hang the client
            log.warning("%s: refusing pipe client, cannot open a channel: %s", self._fwd.name, e)
            self._loop.call_soon_threadsafe(self._abort)
            return
        threading.Thread(target=self._pump_down, daemon=True).start()
        self._loop.call_soon_threadsafe(self._resume)
        self._pump_up()

    def _resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        with self._lock:
            self._queued += len(data)
            over = self._queued > _HIGH_WATER
        self._outgoing.put(data)
        if over and self._transport is not None:
            self._transport.pause_reading()  # back-pressure until the channel took it

    def eof_received(self) -> bool:
        self._outgoing.put(None)
        return True

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._outgoing.put(None)
        self._can_write.set()
        if self._chan is not None:
            self._chan.close()
        self._fwd._track(self, -1)

    def _pump_up(self) -> None:
        """pipe -> channel, in order, blocking on the SSH window."""
        try:
            while (data := self._outgoing.get()) is not None:
                self._chan.sendall(data)
                with self._lock:
                    self._queued -= len(data)
                    resume = self._queued <= _HIGH_WATER // 2
                if resume:
                    self._loop.call_soon_threadsafe(self._resume)
            self._chan.shutdown_write()
        except Exception as e:
            log.debug("%s: pipe->guest ended: %s", self._fwd.name, e)
            self._loop.call_soon_threadsafe(self._abort)

    def _pump_down(self) -> None:
        """channel -> pipe; waits while the pipe transport's buffer is full."""
        try:
            while data := self._chan.recv(BUFFER_SIZE):
                self._can_write.wait()
                self._loop.call_soon_threadsafe(self._write, data)
        except Exception as e:
            log.debug("%s: guest->pipe ended: %s", self._fwd.name, e)
        self._loop.call_soon_threadsafe(self._close)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # flushes what is buffered first


class NamedPipeForwarder:
    """The Windows counterpart of UnixSocketForwarder: owner-only pipe, one channel per client."""

    def __init__(self, pipe_name: str, open_channel: Callable[[], Any], name: str = "engine") -> None:
        if not pipe_name.startswith(PIPE_PREFIX):
            raise ForwardError(f"not a local pipe path: {pipe_name!r}")
        self.pipe_name = pipe_name
        self._open_channel = open_channel
        self.name = name
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._thread: threading.Thread | None = None
        self._relays: set[_PipeRelay] = set()
        self._relays_lock = threading.Lock()
        self._pending_pipe: Any = None

    @property
    def active_connections(self) -> int:
        with self._relays_lock:
            return len(self._relays)

    def _track(self, relay: _PipeRelay, delta: int) -> None:
        with self._relays_lock:
            (self._relays.add if delta > 0 else self._relays.discard)(relay)

    def start(self) -> None:
        if not host_platform.current().named_pipes:
            raise ForwardError("named pipes are only available on Windows")
        self._sddl = owner_only_sddl(current_user_sid())
        try:
            first = _create_pipe_instance(self.pipe_name, self._sddl, first=True)
        except OSError as e:
            raise ForwardError(f"cannot create {self.pipe_name} (is another engine serving it?)", e) from e
        self._loop = asyncio.ProactorEventLoop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(self._accept_next, first)
            self._loop.call_soon(started.set)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"npipe-{self.name}", daemon=True)
        self._thread.start()
        started.wait(5)
        log.info("%s forwarder listening on %s", self.name, self.pipe_name)

    def _accept_next(self, handle: int | None = None) -> None:
        from asyncio.windows_utils import PipeHandle

        try:
            raw = handle if handle is not None else _create_pipe_instance(self.pipe_name, self._sddl, False)
        except OSError as e:
            log.error("%s: cannot create another pipe instance: %s", self.name, e)
            self._loop.call_later(0.5, self._accept_next)
            return
        pipe = PipeHandle(raw)
        self._pending_pipe = pipe
        future = self._loop._proactor.accept_pipe(pipe)  # type: ignore[attr-defined]

        def accepted(f: asyncio.Future) -> None:
            self._pending_pipe = None
            if f.cancelled() or f.exception() is not None:
                pipe.close()
                if not self._loop.is_closed() and self._thread is not None:
                    self._accept_next()
                return
            self._loop._make_duplex_pipe_transport(  # type: ignore[attr-defined]
                pipe, _PipeRelay(self), extra={"addr": self.pipe_name}
            )
            self._accept_next()

        future.add_done_callback(accepted)

    def abort_all(self) -> int:
        """Drop every live connection (see UnixSocketForwarder.abort_all)."""
        with self._relays_lock:
            relays = list(self._relays)
        if self._thread is not None:
            for relay in relays:
                self._loop.call_soon_threadsafe(relay._abort)
        return len(relays)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        thread, self._thread = self._thread, None

        def shutdown() -> None:
            if self._pending_pipe is not None:
                self._pending_pipe.close()
            with self._relays_lock:
                relays = list(self._relays)
            for relay in relays:
                relay._abort()
            self._loop.call_later(0.2, self._loop.stop)

        self._loop.call_soon_threadsafe(shutdown)
        thread.join(timeout)
        self._loop.close()
        log.info("%s forwarder stopped", self.name)


# --- the agent's control API on a pipe ---------------------------------------------------------


class PipeServer:
    """An asyncio stream server on an owner-only named pipe, on the running ProactorEventLoop: what
    asyncio.start_unix_server is for the agent's control API on Linux and macOS.

    Not loop.start_serving_pipe(): that creates the pipe with the default DACL and accepts remote
    clients; this uses the same pipe flags as NamedPipeForwarder (owner-only DACL,
    FILE_FLAG_FIRST_PIPE_INSTANCE, PIPE_REJECT_REMOTE_CLIENTS) and the same proactor calls.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, pipe_name: str, sddl: str,
                 client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> None:
        self._loop, self.pipe_name, self._sddl, self._cb = loop, pipe_name, sddl, client_connected_cb
        self._pending: Any = None
        self._closed = False

    def _accept(self, handle: int | None = None) -> None:
        from asyncio.windows_utils import PipeHandle

        if self._closed:
            return
        try:
            raw = handle if handle is not None else _create_pipe_instance(self.pipe_name, self._sddl, False)
        except OSError as e:
            log.error("cannot create another instance of %s: %s", self.pipe_name, e)
            self._loop.call_later(0.5, self._accept)
            return
        pipe = PipeHandle(raw)
        self._pending = pipe
        future = self._loop._proactor.accept_pipe(pipe)  # type: ignore[attr-defined]

        def accepted(f: asyncio.Future) -> None:
            self._pending = None
            if self._closed or f.cancelled() or f.exception() is not None:
                pipe.close()
                self._accept()
                return
            protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._cb)
            self._loop._make_duplex_pipe_transport(pipe, protocol, extra={"addr": self.pipe_name})  # type: ignore[attr-defined]
            self._accept()

        future.add_done_callback(accepted)

    def close(self) -> None:
        self._closed = True
        if self._pending is not None:
            self._pending.close()
            self._pending = None


async def start_pipe_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any], pipe_name: str
) -> PipeServer:
    """Serve `pipe_name` on the running loop (a ProactorEventLoop, Windows' default)."""
    if not pipe_name.startswith(PIPE_PREFIX):
        raise ForwardError(f"not a local pipe path: {pipe_name!r}")
    if not host_platform.current().named_pipes:
        raise ForwardError("named pipes are only available on Windows")
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "_proactor"):
        raise ForwardError("serving a named pipe needs asyncio's ProactorEventLoop")
    sddl = owner_only_sddl(current_user_sid())
    try:
        first = _create_pipe_instance(pipe_name, sddl, first=True)
    except OSError as e:
        raise ForwardError(f"cannot create {pipe_name} (is another agent serving it?)", e) from e
    server = PipeServer(loop, pipe_name, sddl, client_connected_cb)
    server._accept(first)
    log.info("serving %s", pipe_name)
    return server
