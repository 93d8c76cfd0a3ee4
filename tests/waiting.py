"""Polling helpers shared by the tests: one `wait_for` instead of a copy per file."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 30.0, every: float = 0.3) -> T:
    """Poll `check` until it returns something truthy and return that; an exception counts as "not
    yet". AssertionError naming `what` and the last answer when `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
            if last:
                return last  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last failure
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        time.sleep(every)
