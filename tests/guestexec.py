"""Running a command in the guest over the agent's SSH transport, for tests and benchmarks: the
library's own `hypervisor.ssh.run_command` (diagnose uses it too), under the names tests know."""

from __future__ import annotations

from hypervisor.ssh import CommandResult, GuestSSH, run_command

__all__ = ["CommandResult", "run", "run_in"]


def run(ssh: GuestSSH, command: str, timeout: float = 30.0) -> CommandResult:
    """Run `command` in the guest (exec, no pty) and collect its output and exit status."""
    return run_command(ssh, command, timeout)


def run_in(instance, command: str, timeout: float = 30.0) -> str:  # noqa: ANN001 - tests.conftest.Instance
    """`command` in a running test instance's guest, with its pinned keys; its stdout (it must exit 0)."""
    import json
    import subprocess
    import sys

    from hypervisor.keys import ensure_instance_keys
    from hypervisor.ssh import SSHTarget

    status = json.loads(subprocess.run([sys.executable, "-m", "app.cli", "--name", instance.name, "status", "--json"],
                                       env=instance.env, capture_output=True, text=True, timeout=180).stdout)
    keys = ensure_instance_keys(instance.paths.keys_dir, instance.name)
    target = SSHTarget("127.0.0.1", int(status["ssh_port"]), "root", keys.client_key, keys.host_public, instance.name)
    with GuestSSH(target) as ssh:
        done = run(ssh, command, timeout=timeout)
    assert done.exit_status == 0, (command, done.stdout, done.stderr)
    return done.stdout.decode()
