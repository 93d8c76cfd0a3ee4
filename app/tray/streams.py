"""Engine streams (events, container logs) read on daemon threads and re-emitted as Qt signals.

The docker SDK's streams block in recv(); `stop()` closes the stream to unblock the reader, and
the thread is a daemon so a stuck engine can never hold up quitting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)


class StreamReader(QObject):
    """`item(obj)` per stream element; `ended(reason)` once the stream ends for good."""

    item = Signal(object)
    ended = Signal(str)

    def __init__(
        self,
        open_stream: Callable[[], Iterable[Any]],
        reconnect_after: float | None = None,
        name: str = "stream",
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._open, self._retry, self._name = open_stream, reconnect_after, name
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name=f"pinnace-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None and hasattr(stream, "close"):
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a half-dead socket may raise anything
                log.debug("closing %s stream failed", self._name, exc_info=True)

    def _emit(self, signal: Any, value: Any) -> bool:
        if self._stop.is_set():
            return False
        try:
            signal.emit(value)
            return True
        except RuntimeError:
            self._stop.set()
            return False

    def _run(self) -> None:
        reason = "stopped"
        while not self._stop.is_set():
            try:
                self._stream = self._open()
                for value in self._stream:
                    if not self._emit(self.item, value):
                        return
                reason = "stream ended"
            except Exception as exc:  # noqa: BLE001 - reported through `ended`
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.debug("%s stream: %s", self._name, reason)
            if self._retry is None or self._stop.wait(self._retry):
                break
        self._emit(self.ended, reason)
