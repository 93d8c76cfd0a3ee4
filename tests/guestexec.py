"""Running a command in the guest over the agent's SSH transport, for tests and benchmarks: the
library's own `hypervisor.ssh.run_command` (diagnose uses it too), under the names tests know."""

from __future__ import annotations

from hypervisor.ssh import CommandResult, GuestSSH, run_command

__all__ = ["CommandResult", "run"]


def run(ssh: GuestSSH, command: str, timeout: float = 30.0) -> CommandResult:
    """Run `command` in the guest (exec, no pty) and collect its output and exit status."""
    return run_command(ssh, command, timeout)
