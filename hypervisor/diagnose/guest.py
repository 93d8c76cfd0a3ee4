"""Short commands in the guest for the checks and the bundle: over one SSH transport to the guest's
sshd with the instance's pinned keys (what `pinnace ssh` uses), each command bounded by a timeout
and its output by a size. Nothing here creates keys: an instance without them has no guest to ask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hypervisor import keys
from hypervisor.errors import PinnaceError
from hypervisor.paths import Paths
from hypervisor.ssh import GuestSSH, SSHTarget, run_command

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
OUTPUT_LIMIT = 4 << 20


class GuestUnavailable(PinnaceError):
    """The guest cannot be asked (not running, no keys, sshd not answering)."""


@dataclass(frozen=True)
class GuestOutput:
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def ssh_target(paths: Paths, ssh_port: int) -> SSHTarget:
    """The guest's sshd on the host's loopback, with the instance's client key and pinned host key."""
    directory = paths.keys_dir / paths.instance
    client_key, host_key = directory / keys.CLIENT_KEY_NAME, directory / keys.HOST_KEY_NAME
    if not client_key.is_file() or not host_key.is_file():
        raise GuestUnavailable(f"the instance's SSH keys are missing from {directory}")
    try:
        host_public = keys.public_line(host_key)
    except (OSError, ValueError) as exc:
        raise GuestUnavailable(f"cannot read the guest's pinned host key in {directory}", exc) from exc
    return SSHTarget("127.0.0.1", ssh_port, "root", client_key, host_public, paths.instance)


class Guest:
    """Runs commands in the guest; connects on first use, `close()` ends the transport."""

    def __init__(self, target: SSHTarget) -> None:
        self.ssh = GuestSSH(target)

    def run(self, command: str, timeout: float = 15.0, limit: int = OUTPUT_LIMIT) -> GuestOutput:
        """`command` (exec, no pty) with its exit status and output; SSHError after `timeout` s."""
        done = run_command(self.ssh, command, timeout, limit)
        return GuestOutput(done.exit_status, done.stdout.decode("utf-8", "replace"),
                           done.stderr.decode("utf-8", "replace"))

    def close(self) -> None:
        try:
            self.ssh.close()
        except Exception as exc:  # noqa: BLE001 - closing must never fail a report
            log.debug("closing the guest SSH transport: %s", exc)
