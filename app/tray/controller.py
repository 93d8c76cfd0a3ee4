"""The tray's model of one instance: latest status, lifecycle operations, unexpected-change notices.

The operations are hypervisor.operations' (the CLI's own); every one runs through `run_task`, so the
GUI thread never blocks on the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from app.tray import notices
from app.tray.prefs import TrayPrefs
from app.tray.status_text import one_line
from app.tray.tasks import run_task
from app.tray.watcher import StatusWatcher
from hypervisor import launcher, operations
from hypervisor.control import Status
from hypervisor.operations import Client, SettingsChange
from hypervisor.paths import Paths

log = logging.getLogger(__name__)


class TrayAgents(operations.Agents):
    """The operations' way to the agent, through the controller's client factory (tests pass fakes)."""

    def __init__(self, factory: Callable[[], Client], ensure_agent: Callable[[Paths], Client]) -> None:
        self._factory, self._ensure_agent = factory, ensure_agent

    def client(self, paths: Paths) -> Client:
        return self._factory()

    def ensure_agent(self, paths: Paths) -> Client:
        return self._ensure_agent(paths)


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
        ensure_agent: Callable[[Paths], Client] = launcher.ensure_agent,
        watch: bool = True,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.paths = paths
        self._factory: Callable[[], Client] = client_factory or (lambda: launcher.client(paths))
        self.agents = TrayAgents(self._factory, ensure_agent)
        self.status: Status | None = None
        self.expected: str | None = None
        self.busy_op: str | None = None
        self.clock_warned = ""  # the guest clock warning already notified (notices.clock_notice)
        self.image_told = TrayPrefs.load(paths.config_dir).image_notice_told  # notices.image_notice
        self.watcher: StatusWatcher | None = None
        if watch:
            self.watcher = StatusWatcher(self._factory, lambda: launcher.last_status(paths), parent=self)
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
        clock_note, self.clock_warned = notices.clock_notice(self.clock_warned, status)
        image_note, told = notices.image_notice(self.image_told, status)
        if told != self.image_told:
            self.image_told = told
            self._remember_image_notice(told)
        if not self.busy and notices.settled(self.expected, status):
            self.expected = None
        self.status_changed.emit(status)
        # the state's notice last: where a new notification replaces the shown one, it is the one kept
        for n in (image_note, clock_note, note):
            if n is not None:
                log.info("notice: %s: %s", n.title, n.message)
                self.notice.emit(n)

    def _remember_image_notice(self, told: int) -> None:
        try:
            prefs = TrayPrefs.load(self.paths.config_dir)
            prefs.image_notice_told = told
            prefs.save(self.paths.config_dir)
        except OSError as exc:  # shown again after a restart of the tray at worst
            log.warning("cannot remember the image notice as shown: %s", exc)

    def refresh(self) -> None:
        """One-off status read (e.g. before the menu opens when the watcher is not running)."""
        run_task(lambda: self._factory().status(), self, self._on_status, lambda _e: self._on_status(None))

    # --- operations -----------------------------------------------------------------------------

    # Each one is the hypervisor.operations function the CLI calls too, run off the GUI thread.

    def start(self) -> None:
        """Returns once an agent boots the VM: the watcher follows the boot (Stop stays offered)."""
        self._run("start", lambda: operations.start(self.paths, wait=False, agents=self.agents))

    def stop(self, then: Callable[[], None] | None = None) -> None:
        self._run("stop", lambda: operations.stop(self.paths, agents=self.agents), then)

    def restart(self, change: SettingsChange | None = None) -> None:
        """`change`: settings saved for this restart, put back if the VM does not come up with them."""
        self._run("restart", lambda: operations.restart(self.paths, change, agents=self.agents))

    def reset(self) -> None:
        self._run("reset", lambda: operations.reset(self.paths, agents=self.agents))

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
        if op == "start":  # on a paused VM, Start was its Resume (and it is most likely still paused)
            self.notice.emit(notices.start_failed(message, resuming=self.state == "paused"))
