"""The host agent's control API: JSON lines over a private unix socket (0600 in a 0700 dir).

Requests are one JSON object per line: {"op": "status" | "stop" | "restart" | "reset" | "watch"}.
Replies are {"ok": true, "result": {...}} or {"ok": false, "error": "one line"}. `watch` keeps
the connection open and sends {"event": "status", "result": {...}} on every change, starting
with the current status. The CLI and the tray are both clients; either may come and go.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hypervisor.errors import ControlError

OPS = ("status", "stop", "restart", "reset", "watch")


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
    ssh_port: int | None = None
    port_forwards: list[dict[str, Any]] = field(default_factory=list)

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

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path, self.timeout = socket_path, timeout

    def _connect(self, timeout: float | None) -> socket.socket:
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


def _read_line(sock: socket.socket) -> bytes | None:
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
