"""Run blocking work (agent and engine calls) on a thread pool; results come back as signals.

The result signal is connected to a slot of a QObject that lives on the GUI thread, so Qt
queues the delivery there: callers' callbacks always run on the GUI thread. Tasks are owned by
Python (a module-level set until delivered), never by a Qt parent: a parent destroyed mid-call
(a closed window) would otherwise delete the Task under the worker's feet.
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

    def __init__(self, fn: Callable[[], Any], name: str = "") -> None:
        super().__init__()
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
        except RuntimeError:  # the app is shutting down and Qt already dropped this object
            log.debug("task %s finished during shutdown", self.name)

    @Slot(bool, object)
    def _deliver(self, ok: bool, value: object) -> None:
        try:
            (self.succeeded if ok else self.failed).emit(value)
        except RuntimeError as exc:  # the callback's widget was closed and deleted meanwhile
            log.debug("task %s: result not delivered: %s", self.name, exc)
        finally:
            _LIVE.discard(self)


_LIVE: set[Task] = set()


class _Runner(QRunnable):
    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def run(self) -> None:
        self.task.run_blocking()


def run_task(
    fn: Callable[[], Any],
    parent: QObject | None = None,
    on_ok: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    pool: QThreadPool | None = None,
    name: str = "",
) -> Task:
    """Start `fn` on `pool` (the global one by default). `parent` names the owner for readers;
    delivery to an owner deleted meanwhile is dropped (see Task._deliver)."""
    del parent
    task = Task(fn, name)
    _LIVE.add(task)
    if on_ok is not None:
        task.succeeded.connect(on_ok)
    if on_error is not None:
        task.failed.connect(on_error)
    (pool or QThreadPool.globalInstance()).start(_Runner(task))
    return task
