r"""The host agent's control API: JSON lines over a private unix socket (0600 in a 0700 dir), or on
Windows over an owner-only named pipe (\\.\pipe\pinnace-<instance>-control).

Requests are one JSON object per line: {"op": "status" | "stop" | "restart" | "reset" | "pause" |
"resume" | "watch"}.
Replies are {"ok": true, "result": {...}} or {"ok": false, "error": "one line"}. `watch` keeps
the connection open and sends {"event": "status", "result": {...}} on every change, starting
with the current status. The CLI and the tray are both clients; either may come and go.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hypervisor.errors import ControlError
from hypervisor.paths import PIPE_PREFIX

OPS = ("status", "stop", "restart", "reset", "pause", "resume", "watch")


def is_pipe(address: Path | str) -> bool:
    r"""True for a Windows named pipe name (\\.\pipe\...), False for a unix socket path."""
    return isinstance(address, str) and address.startswith(PIPE_PREFIX)


@dataclass
class Status:
    """What an instance is doing, as the agent (or its last words in state.json) reports it."""

    instance: str
    state: str = "stopped"
    reason: str = ""
    stage: str = ""
    accel: str = ""
    accel_reason: str = ""
    accel_warning: str = ""
    agent_pid: int | None = None
    qemu_pid: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    cpus: int | None = None
    memory_mib: int | None = None
    disk_gib: int | None = None
    engine_version: str = ""
    docker_socket: str = ""
    # what carries the engine socket's bytes: "OpenSSH <version> ControlMaster", or paramiko and why
    socket_transport: str = ""
    ssh_port: int | None = None
    port_forwards: list[dict[str, Any]] = field(default_factory=list)
    # host folders in the guest: {"path", "read_only", "transport"} each; why that transport
    shares: list[dict[str, Any]] = field(default_factory=list)
    share_transport_reason: str = ""
    # the guest clock's offset from the host's (s, + = ahead) when last measured; why it could not be set
    clock_offset_s: float | None = None
    clock_warning: str = ""
    # the host's ssh-agent in the guest: "forwarded to /run/host-services/ssh-auth.sock", or why not
    host_ssh_agent: str = ""
    # the guest image booted (hypervisor/agent/image_slots): version, fingerprint, "known good" or
    # "candidate"; why the installed image is not the one booted; a one-time notice and its id
    image_version: str = ""
    image_fingerprint: str = ""
    image_role: str = ""
    image_note: str = ""
    image_notice: str = ""
    image_notice_id: int = 0
    # the engine's proxy and extra CAs as this boot gave them; why its configuration is not the user's
    engine_proxy: str = ""
    engine_ca: str = ""
    engine_config_warning: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Status:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise ControlError("malformed message from the agent", exc) from exc
    if not isinstance(value, dict):
        raise ControlError("malformed message from the agent: not an object")
    return value


class ControlClient:
    """Blocking client; each call opens its own connection so threads never share one."""

    def __init__(self, socket_path: Path | str, timeout: float = 5.0) -> None:
        self.socket_path, self.timeout = socket_path, timeout  # a unix socket path or a pipe name

    def _connect(self, timeout: float | None) -> socket.socket | PipeStream:
        if is_pipe(self.socket_path):
            try:
                return PipeStream.connect(str(self.socket_path), timeout)
            except OSError as exc:
                raise ControlError(f"the agent is not running (no answer on {self.socket_path})", exc) from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise ControlError(f"the agent is not running (no answer on {self.socket_path})", exc) from exc
        return sock

    def is_alive(self) -> bool:
        try:
            self.call("status")
            return True
        except ControlError:
            return False

    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]:
        if op not in OPS or op == "watch":
            raise ControlError(f"unknown control operation {op!r}")
        with self._connect(self.timeout if timeout is None else timeout) as sock:
            sock.sendall(encode({"op": op}))
            reply = _read_line(sock)
        if reply is None:
            raise ControlError(f"the agent closed the connection during {op}")
        message = decode(reply)
        if not message.get("ok"):
            raise ControlError(str(message.get("error") or f"{op} failed"))
        return message.get("result") or {}

    def status(self) -> Status:
        return Status.from_dict(self.call("status"))

    def watch(self, timeout: float | None = None) -> Iterator[Status]:
        """Status now, then on every change, until the agent closes (e.g. after stop)."""
        with self._connect(timeout) as sock:
            sock.sendall(encode({"op": "watch"}))
            buffer = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError as exc:
                    raise ControlError("timed out waiting for the agent", exc) from exc
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = decode(line)
                    if message.get("event") == "status":
                        yield Status.from_dict(message.get("result") or {})


def _read_line(sock: socket.socket | PipeStream) -> bytes | None:
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(65536)
        except TimeoutError as exc:
            raise ControlError("timed out waiting for the agent", exc) from exc
        if not chunk:
            return data or None
        data += chunk
    return data


# --- Windows named pipe client ----------------------------------------------------------------

ERROR_BROKEN_PIPE = 109
ERROR_PIPE_BUSY = 231
ERROR_PIPE_NOT_CONNECTED = 233
ERROR_MORE_DATA = 234
ERROR_IO_PENDING = 997
WAIT_TIMEOUT = 258


class PipeStream:
    """The client end of a named pipe with the socket calls ControlClient makes (sendall, recv,
    timeouts, context manager), on overlapped I/O as multiprocessing's PipeConnection does.

    Windows only: `_winapi` is imported when connecting (tests pass a fake), never at import time.
    """

    def __init__(self, handle: int, timeout: float | None, winapi: Any) -> None:
        self._handle: int | None = handle
        self._timeout = timeout
        self._w = winapi

    @classmethod
    def connect(cls, name: str, timeout: float | None, winapi: Any = None) -> PipeStream:
        if winapi is None:
            import _winapi as winapi  # noqa: PLC0415 - Windows only
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                handle = winapi.CreateFile(name, winapi.GENERIC_READ | winapi.GENERIC_WRITE, 0, winapi.NULL,
                                           winapi.OPEN_EXISTING, winapi.FILE_FLAG_OVERLAPPED, winapi.NULL)
                return cls(handle, timeout, winapi)
            except OSError as exc:
                # Every instance busy (a client between connect and the server's next accept): wait.
                if getattr(exc, "winerror", None) != ERROR_PIPE_BUSY or (
                        deadline is not None and time.monotonic() >= deadline):
                    raise
                winapi.WaitNamedPipe(name, 100)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def _wait(self, ov: Any) -> None:
        """Wait for an overlapped operation; cancel it and raise TimeoutError when it takes too long."""
        ms = self._w.INFINITE if self._timeout is None else max(0, int(self._timeout * 1000))
        try:
            timed_out = self._w.WaitForMultipleObjects([ov.event], False, ms) == WAIT_TIMEOUT
        except BaseException:
            timed_out = True
            raise
        finally:
            if timed_out:
                ov.cancel()
                ov.GetOverlappedResult(True)  # the kernel must be done with the buffer before we return
        if timed_out:
            raise TimeoutError("timed out on the named pipe")

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            ov, err = self._w.WriteFile(self._handle, bytes(view), overlapped=True)
            if err == ERROR_IO_PENDING:
                self._wait(ov)
            written, err = ov.GetOverlappedResult(True)
            if err:
                raise OSError(f"named pipe write failed (error {err})")
            view = view[written:]

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" when the server closed its end (as a socket's EOF)."""
        try:
            ov, err = self._w.ReadFile(self._handle, size, overlapped=True)
        except OSError as exc:
            if getattr(exc, "winerror", None) in (ERROR_BROKEN_PIPE, ERROR_PIPE_NOT_CONNECTED):
                return b""
            raise
        if err == ERROR_IO_PENDING:
            self._wait(ov)
        _, err = ov.GetOverlappedResult(True)
        if err == ERROR_BROKEN_PIPE:
            return b""
        if err not in (0, ERROR_MORE_DATA):  # MORE_DATA: a message-mode pipe; the rest comes next
            raise OSError(f"named pipe read failed (error {err})")
        return bytes(ov.getbuffer())

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._w.CloseHandle(handle)

    def __enter__(self) -> PipeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
