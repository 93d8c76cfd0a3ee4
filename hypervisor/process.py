"""Starting, finding and ending the QEMU process (the seam tests and adoption rely on).

QEMU runs in its own session so that it outlives an agent that crashes: the next agent finds
it again through the pidfile and the QMP socket instead of booting a second VM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hypervisor.errors import MachineError

log = logging.getLogger(__name__)


def spawn(argv: list[str], stderr_log: Path) -> subprocess.Popen[bytes]:
    stderr_log.parent.mkdir(parents=True, exist_ok=True)
    with open(stderr_log, "ab") as err:
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise MachineError(f"cannot start {argv[0]}", exc) from exc


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform.startswith("linux"):
        try:  # a zombie is dead for our purposes
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        except (OSError, IndexError):
            return False
    return True


def command_line(pid: int) -> str:
    if sys.platform.startswith("linux"):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    try:
        return subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True,
                              text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def is_our_qemu(pid: int | None, instance: str) -> bool:
    """A live process whose command line names this instance (pidfiles can be stale and reused)."""
    return alive(pid) and f"process=pinnace-{instance}" in command_line(pid or 0)


def terminate(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(pid, wait):
            return
    log.warning("process %d survived SIGKILL", pid)


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)
