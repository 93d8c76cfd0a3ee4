"""Follows the agent's `watch` stream on a daemon thread and re-emits each Status on the GUI thread.

A daemon thread (not a QThread) because `watch()` blocks in recv() with no way to interrupt it;
quitting the app must never wait for the agent. When no agent answers, `fallback` supplies the
agent's last words as the launcher reads them (launcher.last_status, the CLI's answer too), so a
start that died still shows its reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from PySide6.QtCore import QObject, Signal

from hypervisor.control import Status
from hypervisor.errors import PinnaceError

log = logging.getLogger(__name__)


class WatchSource(Protocol):
    def watch(self, timeout: float | None = None) -> Iterator[Status]: ...


class StatusWatcher(QObject):
    """`status(Status | None)`: None means no agent is running and it left no status behind."""

    status = Signal(object)

    def __init__(
        self,
        client_factory: Callable[[], WatchSource],
        fallback: Callable[[], Status | None] | None = None,
        parent: QObject | None = None,
        min_delay: float = 0.5,
        max_delay: float = 5.0,
    ) -> None:
        super().__init__(parent)
        self._factory, self._fallback = client_factory, fallback or (lambda: None)
        self._min_delay, self._max_delay = min_delay, max_delay
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pinnace-status-watch", daemon=True)
            self._thread.start()

    def stop(self, wait: float = 0.0) -> None:
        """Ask the thread to end; `wait` > 0 joins it (tests), the app never waits on quit."""
        self._stop.set()
        self._wake.set()
        if wait > 0 and self._thread is not None:
            self._thread.join(wait)

    def poke(self) -> None:
        """Reconnect now (e.g. right after we spawned the agent) instead of after the back-off."""
        self._wake.set()

    def _emit(self, status: Status | None) -> None:
        if self._stop.is_set():
            return
        try:
            self.status.emit(status)
        except RuntimeError:  # our QObject is gone: the app is shutting down
            self._stop.set()

    def _run(self) -> None:
        delay = self._min_delay
        while not self._stop.is_set():
            got_any = False
            try:
                for st in self._factory().watch():
                    got_any = True
                    delay = self._min_delay
                    self._emit(st)
                    if self._stop.is_set():
                        return
            except PinnaceError as exc:
                log.debug("watch: %s", exc)
            except Exception:  # noqa: BLE001 - a bug here must not kill status updates for good
                log.exception("status watch failed")
            try:
                self._emit(self._fallback())
            except Exception:  # noqa: BLE001 - a broken state file must not stop the loop
                log.exception("reading the agent's last status failed")
                self._emit(None)
            # Back off while no agent answers; after a stream that ended, retry after the minimum.
            self._wake.wait(delay if not got_any else self._min_delay)
            self._wake.clear()
            if not got_any:
                delay = min(delay * 2, self._max_delay)
