"""Start, stop, restart and reset of an instance: the one policy behind `pinnace` and the tray.

Both front-ends call these functions (on a worker thread in the tray) and only render what
happens: `on_step` names each phase as it begins, `on_update` receives the status stream while a
boot is followed. A start or restart given new settings puts the old ones back when the VM does not
come up, so a failed start never leaves untested values behind.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hypervisor import disk, engine, launcher
from hypervisor import settings as settings_mod
from hypervisor.control import Status
from hypervisor.engine import EngineUsage
from hypervisor.errors import ControlError, OperationError
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts, Settings

log = logging.getLogger(__name__)

TIMEOUTS = {"boot": 600.0, "stop": 180.0, "restart": 900.0, "reset": 900.0}


class Step(enum.Enum):
    """A phase of an operation, announced as it begins (the CLI prints it, the tray may not)."""

    ALREADY_RUNNING = "already running"
    READOPTING = "re-adopting a VM that runs without its agent"
    STARTING = "starting"
    NOT_RUNNING = "not running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    RESETTING = "resetting"
    WIPED = "data disk and keys deleted; starting fresh"
    RESUMING = "resuming the paused VM"


OnStep = Callable[[Step], None]
OnUpdate = Callable[[Status], None]


class Client(Protocol):
    def status(self) -> Status: ...
    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]: ...
    def is_alive(self) -> bool: ...
    def watch(self, timeout: float | None = None) -> Iterator[Status]: ...


class Agents:
    """How the operations reach an instance's agent: the launcher's functions (a caller with its own
    client, as the tray's tests, overrides `client` or `ensure_agent`)."""

    def client(self, paths: Paths) -> Client:
        return launcher.client(paths)

    def ensure_agent(self, paths: Paths) -> Client:
        return launcher.ensure_agent(paths)

    def qemu_running(self, paths: Paths) -> bool:
        return launcher.qemu_running(paths)

    def wait_for(self, control: Client, on_update: OnUpdate | None) -> Status:
        return launcher.wait_for(control, launcher.FINAL_STATES, on_update, timeout=TIMEOUTS["boot"])


AGENTS = Agents()


def _wait_or_last_words(agents: Agents, control: Client, paths: Paths, on_update: OnUpdate | None,
                        since: float) -> Status:
    """The agent's final state; an agent that failed at once may have written it (state.json) and
    exited before the watch could read it: its last words then (written since this operation
    began, not an earlier run's), not "stopped before reporting"."""
    try:
        return agents.wait_for(control, on_update)
    except ControlError:
        try:
            fresh = paths.state_file.stat().st_mtime >= since - 1.0
        except OSError:
            fresh = False
        last = launcher.last_status(paths)
        if fresh and last.state in launcher.FINAL_STATES and last.reason:
            return last
        raise


# --- settings that apply at this start -----------------------------------------------------------


@dataclass(frozen=True)
class SettingsChange:
    """New settings saved for a start, and the file as it was, to put back if the start fails."""

    path: Path
    previous: str | None  # None: there was no settings file

    def undo(self) -> None:
        log.info("the VM did not start with the new settings: restoring %s", self.path)
        if self.previous is None:
            self.path.unlink(missing_ok=True)
        else:
            self.path.write_text(self.previous)


def change_settings(paths: Paths, new: Settings, host: HostFacts | None = None,
                    current_disk_gib: int | None = None) -> SettingsChange:
    """Validate and save `new` now; SettingsError (file untouched) when a value is invalid."""
    previous = paths.settings_file.read_text() if paths.settings_file.exists() else None
    settings_mod.save(paths.settings_file, new, host, current_disk_gib)
    return SettingsChange(paths.settings_file, previous)


def _tell(on_step: OnStep | None, step: Step) -> None:
    log.info("%s", step.value)
    if on_step is not None:
        on_step(step)


def _settle(op: str, final: Status, change: SettingsChange | None) -> Status:
    """`final` when the VM runs; otherwise the settings go back and OperationError says why."""
    if final.state == "running":
        return final
    if change is not None:
        change.undo()
    raise OperationError(op, final)


def _undo_on_error(change: SettingsChange | None) -> None:
    if change is not None:
        change.undo()


# --- the operations ------------------------------------------------------------------------------


def start(paths: Paths, change: SettingsChange | None = None, *, wait: bool = True,
          on_step: OnStep | None = None, on_update: OnUpdate | None = None, agents: Agents = AGENTS) -> Status:
    """Boot the VM, or find it running (or running without its agent: re-adopt it).

    With `wait`, follow the boot to its end: the running Status, or OperationError (settings in
    `change` restored). Without, return once an agent is booting it (the tray follows the stream).
    """
    try:
        control = agents.client(paths)
        if control.is_alive():
            now = control.status()
            if now.state == "running":
                _tell(on_step, Step.ALREADY_RUNNING)
                return now
            if now.state == "paused":  # still paused after the resume (a full disk): say why
                _tell(on_step, Step.RESUMING)
                final = Status.from_dict(control.call("resume", timeout=TIMEOUTS["stop"]))
                return _settle("start", final, change)
            if now.state in ("error", "stopped"):  # an agent that outlived its VM boots it again
                _tell(on_step, Step.STARTING)
                final = Status.from_dict(control.call("restart", timeout=TIMEOUTS["restart"]))
                return _settle("start", final, change)
        elif agents.qemu_running(paths):
            _tell(on_step, Step.READOPTING)
        _tell(on_step, Step.STARTING)
        since = time.time()
        control = agents.ensure_agent(paths)
        if not wait:  # no further call: an agent whose boot fails at once has already gone again
            return Status(paths.instance, state="starting")
        final = _wait_or_last_words(agents, control, paths, on_update, since)
    except BaseException:
        _undo_on_error(change)
        raise
    return _settle("start", final, change)


def stop(paths: Paths, *, on_step: OnStep | None = None, agents: Agents = AGENTS) -> bool:
    """Shut the VM down cleanly (re-adopting it first if its agent is gone); False if nothing ran."""
    control = agents.client(paths)
    if not control.is_alive():
        if not agents.qemu_running(paths):
            _tell(on_step, Step.NOT_RUNNING)
            return False
        control = agents.ensure_agent(paths)
    _tell(on_step, Step.STOPPING)
    control.call("stop", timeout=TIMEOUTS["stop"])
    return True


def pause(paths: Paths, *, agents: Agents = AGENTS) -> Status:
    """Pause the running VM (QMP stop); `start` resumes it. The status it ended in."""
    control = agents.client(paths)
    if not control.is_alive():
        return Status(paths.instance, state="stopped", reason="not running")
    return Status.from_dict(control.call("pause", timeout=TIMEOUTS["stop"]))


def restart(paths: Paths, change: SettingsChange | None = None, *, on_step: OnStep | None = None,
            on_update: OnUpdate | None = None, agents: Agents = AGENTS) -> Status:
    """Stop, then boot again (a plain start when nothing runs); the running Status or OperationError."""
    if not agents.client(paths).is_alive() and not agents.qemu_running(paths):
        return start(paths, change, on_step=on_step, on_update=on_update, agents=agents)
    try:
        control = agents.ensure_agent(paths)
        _tell(on_step, Step.RESTARTING)
        final = Status.from_dict(control.call("restart", timeout=TIMEOUTS["restart"]))
    except BaseException:
        _undo_on_error(change)
        raise
    return _settle("restart", final, change)


def reset(paths: Paths, *, on_step: OnStep | None = None, on_update: OnUpdate | None = None,
          agents: Agents = AGENTS) -> Status:
    """Delete the data disk and keys, keep the settings, boot fresh; the running Status or OperationError.

    A running VM is reset by its agent (clean stop first); with nothing running the files go now.
    """
    control = agents.client(paths)
    if control.is_alive() or agents.qemu_running(paths):
        control = agents.ensure_agent(paths)
        _tell(on_step, Step.RESETTING)
        final = Status.from_dict(control.call("reset", timeout=TIMEOUTS["reset"]))
    else:
        disk.delete_instance_data(paths.data_disk, paths.keys_dir)  # refuses while a QEMU holds the disk
        _tell(on_step, Step.WIPED)
        since = time.time()
        final = _wait_or_last_words(agents, agents.ensure_agent(paths), paths, on_update, since)
    return _settle("reset", final, None)


# --- what a reset deletes ------------------------------------------------------------------------


def disk_bytes(st: os.stat_result) -> int:
    """Bytes a (sparse) file really takes: st_blocks where there is one, its size on Windows."""
    blocks = getattr(st, "st_blocks", None)
    return blocks * 512 if blocks is not None else st.st_size


@dataclass(frozen=True)
class ResetPreview:
    """What a reset deletes, shown before it is confirmed; the settings file is kept."""

    engine: EngineUsage | None  # None: the engine is not running, so its contents cannot be counted
    data_disk: Path | None  # None: there is no data disk yet
    data_disk_bytes: int
    keys_dir: Path
    settings_file: Path


def reset_preview(paths: Paths, status: Status | None) -> ResetPreview:
    """Count what the engine holds (when it runs) and what the data disk takes on the host."""
    usage = None
    if status is not None and status.state == "running" and status.docker_socket:
        usage = engine.usage(status.docker_socket)
    disk = paths.data_disk if paths.data_disk.exists() else None
    used = disk_bytes(disk.stat()) if disk is not None else 0
    return ResetPreview(usage, disk, used, paths.keys_dir, paths.settings_file)
