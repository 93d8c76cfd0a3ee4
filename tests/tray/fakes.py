"""Fake control clients: only for view logic and responsiveness tests (VM flows use a real agent)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from hypervisor.control import Status
from hypervisor.errors import ControlError


class SlowClient:
    """Answers like an agent, but every lifecycle call takes `delay` seconds."""

    def __init__(self, status: Status, delay: float = 2.0) -> None:
        self._status, self.delay = status, delay
        self.calls: list[tuple[str, float | None, str]] = []
        self.lock = threading.Lock()

    def status(self) -> Status:
        return self._status

    def is_alive(self) -> bool:
        return True

    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]:
        with self.lock:
            self.calls.append((op, timeout, threading.current_thread().name))
        time.sleep(self.delay)
        if op == "stop":
            self._status = Status(self._status.instance, state="stopped")
        return {}

    def watch(self, timeout: float | None = None) -> Iterator[Status]:
        yield self._status


class DeadClient:
    """No agent: every call fails the way ControlClient does."""

    def status(self) -> Status:
        raise ControlError("the agent is not running (no answer on /nowhere)")

    def is_alive(self) -> bool:
        return False

    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]:
        raise ControlError("the agent is not running (no answer on /nowhere)")

    def watch(self, timeout: float | None = None) -> Iterator[Status]:
        raise ControlError("the agent is not running (no answer on /nowhere)")
