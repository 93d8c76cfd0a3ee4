"""Finding or starting the host agent for an instance: the one code path behind `pinnace start`,
`pinnace status` (re-adoption) and the tray's Start."""

from __future__ import annotations

import json
import logging
import ntpath
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from hypervisor import bootlog, process
from hypervisor import platform as host_platform
from hypervisor.control import ControlClient, Status
from hypervisor.errors import ControlError
from hypervisor.paths import Paths
from hypervisor.platform import Platform, for_os

log = logging.getLogger(__name__)


# Where following a boot ends: it came up, it failed, or it was stopped meanwhile.
FINAL_STATES = frozenset({"running", "error", "stopped"})

# windowed program -> its console twin in the same folder (a frozen build runs `-m hypervisor.agent`
# through installers/macos/frozen_entry.py from either of its programs).
CONSOLE_TWINS = {"pythonw.exe": "python.exe", "pinnace-tray.exe": "pinnace.exe"}


def agent_python(executable: str, platform: str | None = None,
                 exists: Callable[[str], bool] = os.path.exists) -> str:
    """The interpreter for the agent: on Windows the console program even when we run as a windowed
    one (the tray: pythonw.exe, or the frozen pinnace-tray.exe). A console program under
    CREATE_NO_WINDOW gets a hidden console that qemu-img, the accel probes and PowerShell share;
    under a windowed one each of them would open a console window."""
    if not process.is_windows(platform):
        return executable
    folder, name = ntpath.split(executable)
    console_name = CONSOLE_TWINS.get(name.lower())
    if console_name is None:
        return executable
    console = ntpath.join(folder, console_name)
    return console if exists(console) else executable


def agent_argv(paths: Paths, platform: str | None = None) -> list[str]:
    return [agent_python(sys.executable, platform), "-m", "hypervisor.agent", "--name", paths.instance]


def _platform(os_name: str | None) -> Platform:
    return for_os(os_name) if os_name else host_platform.current()


def control_address(paths: Paths, os_name: str | None = None) -> Path | str:
    """The agent's control endpoint: its unix socket, or its named pipe on Windows."""
    return _platform(os_name).control_endpoint(paths)


def client(paths: Paths, timeout: float = 5.0) -> ControlClient:
    return ControlClient(control_address(paths), timeout=timeout)


def spawn_agent(paths: Paths) -> subprocess.Popen[bytes]:
    paths.ensure_dirs()
    with open(paths.log_dir / "agent.stderr.log", "ab") as err:
        proc = subprocess.Popen(agent_argv(paths), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                env=dict(os.environ), **process.spawn_options())
    host_platform.current().write_private_text(paths.agent_pidfile, str(proc.pid))
    return proc


def ensure_agent(paths: Paths, timeout: float = 20.0) -> ControlClient:
    """Return a client of the instance's agent, starting the agent (detached) if needed."""
    control = client(paths)
    if control.is_alive():
        return control
    proc = spawn_agent(paths)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if control.is_alive():
            return control
        if proc.poll() is not None:
            if control.is_alive():
                return control
            detail = bootlog.last_lines(paths.agent_log, 1) or bootlog.last_lines(
                paths.log_dir / "agent.stderr.log", 1)
            raise ControlError("the agent exited at start" + (f": {detail[-1]}" if detail else ""))
        time.sleep(0.05)
    raise ControlError(f"the agent did not answer within {timeout:.0f} s (see {paths.agent_log})")


def qemu_running(paths: Paths) -> bool:
    return process.is_our_qemu(process.read_pidfile(paths.qemu_pidfile), paths.instance)


def last_status(paths: Paths) -> Status:
    """The agent's last words (state.json), corrected for what is no longer true."""
    status = Status(instance=paths.instance)
    try:
        status = Status.from_dict(json.loads(paths.state_file.read_text()))
    except (OSError, ValueError):
        return status
    if status.state in ("running", "starting", "stopping", "paused") and not qemu_running(paths):
        status.reason = "the VM is no longer running (its QEMU process is gone)"
        status.state = "error"
    status.agent_pid = None
    if status.state != "running":
        status.docker_socket = ""
    return status


def current_status(paths: Paths, adopt_timeout: float = 120.0) -> Status:
    """Ask the agent; if it died but QEMU lives, re-adopt the VM with a new agent."""
    control = client(paths)
    try:
        return control.status()
    except ControlError:
        pass
    if qemu_running(paths):
        log.info("QEMU is running without an agent: re-adopting it")
        return wait_for(ensure_agent(paths), FINAL_STATES, timeout=adopt_timeout)
    return last_status(paths)


class Watchable(Protocol):
    def watch(self, timeout: float | None = None) -> Iterator[Status]: ...


def wait_for(control: Watchable, states: set[str] | frozenset[str],
             on_update: Callable[[Status], None] | None = None, timeout: float = 600.0) -> Status:
    """Follow the agent's status stream until a state in `states` (or the stream ends)."""
    last: Status | None = None
    deadline = time.monotonic() + timeout
    for status in control.watch(timeout=timeout):
        last = status
        if on_update is not None:
            on_update(status)
        if status.state in states or time.monotonic() > deadline:
            return status
    if last is None:
        raise ControlError("the agent stopped before reporting any status")
    return last


def engine_address(paths: Paths, os_name: str | None = None) -> Path | str:
    """Where the forwarded engine listens: its unix socket, or its named pipe on Windows."""
    return _platform(os_name).engine_endpoint(paths)


def docker_host(paths: Paths, os_name: str | None = None) -> str:
    """DOCKER_HOST for the instance: unix://<socket>, or npipe:////./pipe/pinnace-<instance> on Windows."""
    return _platform(os_name).docker_host(paths)
