"""The engine socket's bytes moved by OpenSSH: an `ssh` ControlMaster that forwards the socket.

Why: paramiko's per-packet Python work held the engine socket at ~0.6x OpenSSH's speed. A
ControlMaster `ssh` to the guest (the same key, the same pinned host key, no user config) listens
with `-L` on a private socket beside the engine socket and relays each client in C, with OpenSSH's
own half-close handling. The agent points the engine socket's name at that listener while the VM
runs and back at its own listener whenever it must answer itself (starting, paused, the master
gone); see endpoint_switch.py. Handing accepted clients to the master instead (MUX_C_NEW_STDIO_FWD)
needs OpenSSH 9.4 for unix-socket targets and could not pass a guest's half-close on.

Message building and parsing for the control socket are pure functions; `OpenSSHMaster` runs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hypervisor import platform as host_platform
from hypervisor.errors import SSHError

log = logging.getLogger(__name__)

MUX_MSG_HELLO = 0x00000001
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_TERMINATE = 0x10000005
MUX_S_OK = 0x80000001
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_ALIVE = 0x80000005
MUX_PROTOCOL_VERSION = 4
HOST_KEY_ALIAS = "pinnace-guest"
MAX_REPLY = 256 * 1024
MASTER_START_TIMEOUT_S = 15.0
CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"


class MuxError(SSHError):
    """The ControlMaster is missing, refused a request or spoke out of protocol."""


# --- pure: messages ----------------------------------------------------------------------------


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _string(value: bytes) -> bytes:
    return _u32(len(value)) + value


def frame(body: bytes) -> bytes:
    """One mux packet: its length, then the body (which starts with the message type)."""
    return _string(body)


def hello() -> bytes:
    return frame(_u32(MUX_MSG_HELLO) + _u32(MUX_PROTOCOL_VERSION))


def alive_check(request_id: int) -> bytes:
    return frame(_u32(MUX_C_ALIVE_CHECK) + _u32(request_id))


def terminate(request_id: int) -> bytes:
    return frame(_u32(MUX_C_TERMINATE) + _u32(request_id))


@dataclass(frozen=True)
class Reply:
    """A message from the master: its type, the request it answers and what it carries."""

    kind: int
    request_id: int = 0
    value: int = 0  # the master's pid (ALIVE), the protocol version (HELLO)
    reason: str = ""  # FAILURE / PERMISSION_DENIED


def parse_reply(body: bytes) -> Reply:
    """Decode one packet body; MuxError if it is cut short."""
    try:
        (kind,) = struct.unpack_from(">I", body, 0)
        if kind == MUX_MSG_HELLO:
            return Reply(kind, value=struct.unpack_from(">I", body, 4)[0])
        (request_id,) = struct.unpack_from(">I", body, 4)
        if kind in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED):
            (length,) = struct.unpack_from(">I", body, 8)
            return Reply(kind, request_id, reason=body[12:12 + length].decode(errors="replace"))
        if kind == MUX_S_ALIVE:
            return Reply(kind, request_id, value=struct.unpack_from(">I", body, 8)[0])
        return Reply(kind, request_id)
    except struct.error as e:
        raise MuxError(f"malformed mux message ({len(body)} bytes)", e) from e


def split_packets(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Whole packet bodies at the front of `buffer`, and the incomplete rest."""
    bodies = []
    while len(buffer) >= 4:
        (length,) = struct.unpack_from(">I", buffer, 0)
        if length > MAX_REPLY:
            raise MuxError(f"mux packet of {length} bytes is too big")
        if len(buffer) < 4 + length:
            break
        bodies.append(buffer[4:4 + length])
        buffer = buffer[4 + length:]
    return bodies, buffer


# --- pure: the master's command line ------------------------------------------------------------


@dataclass(frozen=True)
class MasterSpec:
    """What the master needs: the guest's sshd, our key, the pinned host key, its control socket
    and the forward it serves (a private local socket to the guest's engine socket)."""

    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path  # holds only the pinned key, under HOST_KEY_ALIAS
    control_path: Path
    listen_path: Path
    remote_socket: str


def known_hosts_line(host_public: str) -> str:
    """The pinned key under a fixed alias: the port QEMU forwards changes, the key must not."""
    key_type, blob = host_public.split()[:2]
    return f"{HOST_KEY_ALIAS} {key_type} {blob}\n"


def master_argv(ssh_binary: str, spec: MasterSpec) -> list[str]:
    """`ssh` as a ControlMaster that runs no command and serves one forward: `listen_path` (born
    0600 by StreamLocalBindMask) to the guest's engine socket.

    No user or system ssh config is read, only our key is offered and only the pinned key is
    accepted. No keepalive: a VM paused by QEMU must not cost its connections (the agent's
    paramiko link finds a dead guest and the agent replaces the master).
    """
    options = {
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "IdentityFile": str(spec.client_key),
        "HostKeyAlias": HOST_KEY_ALIAS,
        "UserKnownHostsFile": str(spec.known_hosts),
        "GlobalKnownHostsFile": os.devnull,
        "StrictHostKeyChecking": "yes",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "ControlMaster": "yes",
        "ControlPath": str(spec.control_path),
        "ControlPersist": "no",
        "ServerAliveInterval": "0",
        "ConnectTimeout": "10",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ExitOnForwardFailure": "yes",
        "StreamLocalBindMask": "0177",
        "StreamLocalBindUnlink": "yes",
        "PermitLocalCommand": "no",
        "Ciphers": CIPHERS,
        "LogLevel": "ERROR",
    }
    argv = [ssh_binary, "-N", "-F", os.devnull, "-p", str(spec.port), "-l", spec.user]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return [*argv, "-L", f"{spec.listen_path}:{spec.remote_socket}", spec.host]


# --- running: the master ------------------------------------------------------------------------


def _connect(control_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(control_path))
    except OSError as e:
        sock.close()
        raise MuxError(f"cannot reach the ssh control socket {control_path}: {e}", e) from e
    return sock


def _ask(control_path: Path, request: bytes, timeout: float) -> Reply:
    """One request on a fresh control connection; the master's answer to it."""
    with _connect(control_path) as sock:
        sock.settimeout(timeout)
        sock.sendall(hello() + request)
        buffer = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except OSError as e:
                raise MuxError(f"the ssh master did not answer: {e}", e) from e
            if not chunk:
                raise MuxError("the ssh master closed the control connection")
            bodies, buffer = split_packets(buffer + chunk)
            for body in bodies:
                reply = parse_reply(body)
                if reply.kind != MUX_MSG_HELLO:
                    return reply


def master_pid(control_path: Path, timeout: float = 3.0) -> int | None:
    """The pid of the master answering on `control_path`, None if none does."""
    try:
        reply = _ask(control_path, alive_check(1), timeout)
    except MuxError:
        return None
    return reply.value if reply.kind == MUX_S_ALIVE else None


def end_stale_master(control_path: Path, timeout: float = 3.0) -> bool:
    """A master left by an agent that was killed still serves the engine socket: ask it to end
    and wait until it has (killed if it will not). True if there was one."""
    pid = master_pid(control_path, timeout) if control_path.exists() else None
    if pid is None:
        return False
    with contextlib.suppress(MuxError):  # it exits before its answer goes out: EOF is the answer
        _ask(control_path, terminate(2), timeout)
    deadline = time.monotonic() + timeout
    while host_platform.current().alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    log.warning("ended a stale ssh master (pid %d) left on %s", pid, control_path)
    return True


class OpenSSHMaster:
    """An `ssh` ControlMaster child process that carries engine connections."""

    def __init__(self, spec: MasterSpec, log_path: Path, ssh_binary: str | None = None) -> None:
        self.spec, self.log_path = spec, log_path
        self.ssh_binary = ssh_binary or shutil.which("ssh")
        self._process: subprocess.Popen | None = None
        self.stopped_by_us = False  # the last exit was asked for (stop), not a crash or a lost guest

    @property
    def available(self) -> bool:
        return self.ssh_binary is not None

    def start(self, timeout: float = MASTER_START_TIMEOUT_S) -> None:
        """Start the master; return once its control socket answers with its pid and it listens."""
        if self.ssh_binary is None:
            raise MuxError("no OpenSSH client (ssh) on PATH")
        self._clear_stale_control_socket()
        self.stopped_by_us = False
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                master_argv(self.ssh_binary, self.spec), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file, close_fds=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise MuxError(f"ssh exited with {self._process.returncode}: {self.log_tail()}")
            if self.spec.control_path.exists() and self.spec.listen_path.is_socket():
                with contextlib.suppress(MuxError):
                    reply = _ask(self.spec.control_path, alive_check(1), 2.0)
                    if reply.kind == MUX_S_ALIVE and reply.value == self._process.pid:
                        log.info("ssh ControlMaster %d serves %s", self._process.pid, self.spec.listen_path)
                        return
            time.sleep(0.05)
        self.stop()
        raise MuxError(f"the ssh master was not ready in {timeout:.0f} s: {self.log_tail()}")

    def running(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    def wait(self) -> int | None:
        """Block until the master exits; its exit code (None if it was never started)."""
        process = self._process
        return process.wait() if process is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        """End the master and every session it carries; remove its control socket."""
        process, self._process = self._process, None
        if process is None:
            return
        self.stopped_by_us = True
        if process.poll() is None:
            # asked over its socket first: a signal may be blocked in a mask it inherited
            with contextlib.suppress(MuxError):
                _ask(self.spec.control_path, terminate(1), min(timeout, 2.0))
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for path in (self.spec.control_path, self.spec.listen_path):
            with contextlib.suppress(FileNotFoundError):
                if path.is_socket():
                    path.unlink()

    def _clear_stale_control_socket(self) -> None:
        end_stale_master(self.spec.control_path)
        self._remove_sockets()

    def log_tail(self) -> str:
        """The last line the master wrote (why it failed), for a one-line reason."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"
