"""Running a command in the guest over the agent's SSH transport: only tests and benchmarks do
that (the product talks to the engine, never to a shell), so it lives here, not in hypervisor.ssh."""

from __future__ import annotations

import time
from dataclasses import dataclass

import paramiko

from hypervisor.errors import SSHError
from hypervisor.ssh import GuestSSH


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


def run(ssh: GuestSSH, command: str, timeout: float = 30.0) -> CommandResult:
    """Run `command` in the guest (exec, no pty) and collect its output and exit status."""
    deadline = time.monotonic() + timeout
    transport = ssh.ensure_connected(min(timeout, 10.0))
    try:
        chan = transport.open_session(timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise SSHError("cannot open an exec session in the guest", e) from e
    stdout, stderr = bytearray(), bytearray()
    try:
        chan.settimeout(0.2)
        chan.exec_command(command)
        while True:
            while chan.recv_stderr_ready():
                stderr += chan.recv_stderr(65536)
            try:
                data = chan.recv(65536)
            except TimeoutError:
                data = None
            if data == b"":
                break
            if data:
                stdout += data
            if time.monotonic() > deadline:
                raise SSHError(f"command timed out after {timeout:g}s: {command}")
        while chan.recv_stderr_ready():
            stderr += chan.recv_stderr(65536)
        if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
            raise SSHError(f"command timed out after {timeout:g}s: {command}")
        return CommandResult(chan.exit_status, bytes(stdout), bytes(stderr))
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise SSHError(f"command failed in the guest: {command}", e) from e
    finally:
        chan.close()
