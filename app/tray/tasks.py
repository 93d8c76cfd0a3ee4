"""Run blocking work (agent and engine calls) on a thread pool; results come back as signals.

The result signal is connected to a slot of a QObject that lives on the GUI thread, so Qt
queues the delivery there: callers' callbacks always run on the GUI thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

log = logging.getLogger(__name__)


class Task(QObject):
    """One piece of blocking work; `succeeded(result)` or `failed(exception)` fire on the GUI thread."""

    succeeded = Signal(object)
    failed = Signal(object)
    _finished = Signal(bool, object)

    def __init__(self, fn: Callable[[], Any], parent: QObject | None = None, name: str = "") -> None:
        super().__init__(parent)
        self.fn, self.name = fn, name or getattr(fn, "__name__", "task")
        self._finished.connect(self._deliver)

    def run_blocking(self) -> None:
        """Called on a worker thread."""
        try:
            result = self.fn()
        except Exception as exc:  # noqa: BLE001 - every failure must reach the GUI as a signal
            log.debug("task %s failed: %s", self.name, exc, exc_info=True)
            ok, value = False, exc
        else:
            ok, value = True, result
        try:
            self._finished.emit(ok, value)
        except RuntimeError:  # the owner was destroyed while we ran (e.g. window closed)
            log.debug("task %s finished after its owner was deleted", self.name)

    @Slot(bool, object)
    def _deliver(self, ok: bool, value: object) -> None:
        (self.succeeded if ok else self.failed).emit(value)
        self.deleteLater()


class _Runner(QRunnable):
    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def run(self) -> None:
        self.task.run_blocking()


def run_task(
    fn: Callable[[], Any],
    parent: QObject,
    on_ok: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    pool: QThreadPool | None = None,
    name: str = "",
) -> Task:
    """Start `fn` on `pool` (the global one by default); `parent` keeps the Task alive."""
    task = Task(fn, parent, name)
    if on_ok is not None:
        task.succeeded.connect(on_ok)
    if on_error is not None:
        task.failed.connect(on_error)
    (pool or QThreadPool.globalInstance()).start(_Runner(task))
    return task
