"""Starting, finding and ending the QEMU process (the seam tests and adoption rely on).

QEMU runs detached from the agent (its own session on POSIX; its own process group and hidden
console on Windows) so that it outlives an agent that crashes: the next agent finds it again
through the pidfile and the QMP socket instead of booting a second VM.

How each OS detaches, probes and ends a process is the platform strategy's
(`hypervisor.platform`); the functions here keep their old names and signatures for the callers,
and a `platform` argument (a `sys.platform` value) still asks for another OS's answer.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from hypervisor import platform as host_platform
from hypervisor.errors import MachineError
from hypervisor.platform import Platform


def _strategy(platform: str | None) -> Platform:
    return host_platform.current() if platform is None else host_platform.for_os(platform)


def is_windows(platform: str | None = None) -> bool:
    return _strategy(platform).windows


def spawn_options(platform: str | None = None) -> dict[str, Any]:
    """Popen keywords that detach a long-lived child (QEMU, the agent) from its parent."""
    return _strategy(platform).spawn_options()


def no_window_options(platform: str | None = None) -> dict[str, Any]:
    """Popen keywords for a short helper command: no console window where that matters."""
    return _strategy(platform).no_window_options()


def spawn(argv: list[str], stderr_log: Path) -> subprocess.Popen[bytes]:
    stderr_log.parent.mkdir(parents=True, exist_ok=True)
    with open(stderr_log, "ab") as err:
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    **host_platform.current().spawn_options())
        except OSError as exc:
            raise MachineError(f"cannot start {argv[0]}", exc) from exc


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    return host_platform.current().alive(pid)


def command_line_argv(pid: int, platform: str | None = None, env: dict[str, str] | None = None) -> list[str]:
    """The command that prints `pid`'s command line where /proc is missing (macOS, Windows)."""
    return _strategy(platform).command_line_argv(pid, env)


def command_line(pid: int) -> str:
    return host_platform.current().command_line(pid)


def names_instance(command: str, instance: str) -> bool:
    """True when a QEMU command line carries `-name ...,process=pinnace-<instance>` exactly
    (so instance "dev" never claims the QEMU of "dev2")."""
    return re.search(rf"process=pinnace-{re.escape(instance)}(?=$|[\s\",])", command) is not None


def is_our_qemu(pid: int | None, instance: str) -> bool:
    """A live process whose command line names this instance (pidfiles can be stale and reused)."""
    plat = host_platform.current()
    return plat.alive(pid) and names_instance(plat.command_line(pid or 0), instance)


def terminate(pid: int, grace: float = 3.0) -> None:
    """End `pid`: SIGTERM then SIGKILL after `grace` s on POSIX; TerminateProcess on Windows."""
    host_platform.current().terminate(pid, grace)


def wait_exit(pid: int, timeout: float) -> bool:
    return host_platform.current().wait_exit(pid, timeout)
