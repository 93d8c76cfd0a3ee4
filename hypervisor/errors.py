"""One root exception for the machine layer; every subclass keeps its underlying cause.

`str(err)` is a single readable line ("message: cause") that the CLI prints as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hypervisor.control import Status


class PinnaceError(Exception):
    """Root of every error the hypervisor package raises on purpose."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause

    def __str__(self) -> str:
        if self.cause is None:
            return self.message
        detail = str(self.cause).strip().splitlines()
        return f"{self.message}: {detail[0]}" if detail else self.message


class SettingsError(PinnaceError):
    """The settings file or a requested value is invalid (names the key)."""


class QemuNotFoundError(PinnaceError):
    """No usable qemu-system binary; the message says how to install one."""


class QemuVersionError(PinnaceError):
    """QEMU is older than Pinnace supports."""


class AcceleratorError(PinnaceError):
    """An explicitly requested accelerator is unavailable or failed its probe."""


class MachineError(PinnaceError):
    """QEMU failed to start, died, or the guest did not become ready."""


class StateError(PinnaceError):
    """An operation is not allowed in the instance's current state."""


class OperationError(PinnaceError):
    """A start, restart or reset ended with the VM not running; `status` is where it ended."""

    def __init__(self, op: str, status: Status) -> None:
        super().__init__(status.reason or status.state)
        self.op, self.status = op, status


class MonitorError(PinnaceError):
    """The QMP connection failed or a command was refused."""


class ControlError(PinnaceError):
    """The host agent's control API could not be reached or answered an error."""


class SSHError(PinnaceError):
    """The SSH transport to the guest failed."""


class HostKeyMismatchError(SSHError):
    """The guest presented a host key other than the pinned one."""


class ForwardError(PinnaceError):
    """A socket or port forward could not be set up."""


class EngineError(PinnaceError):
    """The forwarded Docker engine could not be reached or refused a request."""


class EngineUnavailableError(EngineError):
    """The engine cannot serve now for a reason the user must see (the VM is paused): the socket
    forwarder answers docker clients with this message instead of leaving them hanging."""
