"""The tray's model of one instance: latest status, lifecycle operations, unexpected-change notices.

Every agent call runs through `run_task`, so the GUI thread never blocks on the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from PySide6.QtCore import QObject, Signal

from app.tray import notices
from app.tray.status_text import one_line
from app.tray.tasks import run_task
from app.tray.watcher import StatusWatcher, last_words
from hypervisor.control import ControlClient, Status
from hypervisor.paths import Paths

log = logging.getLogger(__name__)

TIMEOUTS = {"stop": 180.0, "restart": 600.0, "reset": 600.0}


class Client(Protocol):
    def status(self) -> Status: ...
    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]: ...
    def is_alive(self) -> bool: ...


def last_status(paths: Paths) -> Status | None:
    """The launcher's reading of state.json (corrected for a dead QEMU); our own if it is absent."""
    try:
        from hypervisor.launcher import last_status as launcher_last_status
    except ImportError:
        return last_words(paths.state_file, paths.instance)
    return launcher_last_status(paths)


def default_ensure_agent(paths: Paths) -> Client:
    """Same code path as `pinnace start`: spawn the detached agent if needed."""
    from hypervisor.launcher import ensure_agent

    return ensure_agent(paths)


class InstanceController(QObject):
    status_changed = Signal(object)  # Status | None
    busy_changed = Signal(bool)
    notice = Signal(object)  # Notice
    operation_done = Signal(str)  # op
    operation_failed = Signal(str, str)  # op, one-line message

    def __init__(
        self,
        paths: Paths,
        client_factory: Callable[[], Client] | None = None,
        ensure_agent: Callable[[Paths], Client] = default_ensure_agent,
        watch: bool = True,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.paths = paths
        from hypervisor.launcher import control_address

        self._factory = client_factory or (lambda: ControlClient(control_address(paths)))
        self._ensure_agent = ensure_agent
        self.status: Status | None = None
        self.expected: str | None = None
        self.busy_op: str | None = None
        self.watcher: StatusWatcher | None = None
        if watch:
            self.watcher = StatusWatcher(self._factory, lambda: last_status(paths), parent=self)
            self.watcher.status.connect(self._on_status)

    # --- state ----------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.busy_op is not None

    @property
    def state(self) -> str:
        return self.status.state if self.status else "stopped"

    def start_watching(self) -> None:
        if self.watcher:
            self.watcher.start()

    def shutdown(self) -> None:
        if self.watcher:
            self.watcher.stop()

    def _on_status(self, status: Status | None) -> None:
        prev = self.status
        if prev == status:
            return
        self.status = status
        note = notices.notice_for(prev, status, self.expected)
        if not self.busy and notices.settled(self.expected, status):
            self.expected = None
        self.status_changed.emit(status)
        if note is not None:
            log.info("notice: %s: %s", note.title, note.message)
            self.notice.emit(note)

    def refresh(self) -> None:
        """One-off status read (e.g. before the menu opens when the watcher is not running)."""
        run_task(lambda: self._factory().status(), self, self._on_status, lambda _e: self._on_status(None))

    # --- operations -----------------------------------------------------------------------------

    def start(self) -> None:
        self._run("start", self._do_start)

    def stop(self, then: Callable[[], None] | None = None) -> None:
        self._run("stop", lambda: self._factory().call("stop", timeout=TIMEOUTS["stop"]), then)

    def restart(self) -> None:
        self._run("restart", lambda: self._factory().call("restart", timeout=TIMEOUTS["restart"]))

    def reset(self) -> None:
        self._run("reset", self._do_reset)

    def _do_start(self) -> object:
        client = self._factory()
        if client.is_alive():
            # An agent that is alive but not running (error/stopped) restarts its VM.
            if client.status().state in ("error", "stopped"):
                return client.call("restart", timeout=TIMEOUTS["restart"])
            return None
        return self._ensure_agent(self.paths)

    def _do_reset(self) -> object:
        client = self._factory()
        if not client.is_alive():
            client = self._ensure_agent(self.paths)
        return client.call("reset", timeout=TIMEOUTS["reset"])

    def _run(self, op: str, fn: Callable[[], object], then: Callable[[], None] | None = None) -> None:
        if self.busy:
            log.info("ignoring %s: %s is still in progress", op, self.busy_op)
            return
        self.busy_op, self.expected = op, op
        self.busy_changed.emit(True)
        log.info("%s requested", op)

        def done(_result: object) -> None:
            self._finish(op, None)
            if then is not None:
                then()

        def failed(exc: BaseException) -> None:
            self._finish(op, exc)
            if then is not None:
                then()

        run_task(fn, self, done, failed, name=op)

    def _finish(self, op: str, exc: BaseException | None) -> None:
        self.busy_op = None
        self.busy_changed.emit(False)
        if self.watcher:
            self.watcher.poke()
        if exc is None:
            log.info("%s finished", op)
            if notices.settled(self.expected, self.status):
                self.expected = None
            self.operation_done.emit(op)
            return
        message = one_line(str(exc)) or type(exc).__name__
        log.warning("%s failed: %s", op, message)
        self.expected = None
        self.operation_failed.emit(op, message)
        if op == "start":
            self.notice.emit(notices.start_failed(message))
