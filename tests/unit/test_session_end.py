"""The end of the user's session turns into a clean stop: POSIX signals through the event loop,
Windows console events through a handler that holds the process until the VM is down."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from hypervisor.platform.posix import PosixPlatform
from hypervisor.platform.windows import CONSOLE_EVENTS, console_handler

pytestmark = pytest.mark.timeout(30)


def test_posix_signals_call_stop_on_the_loop() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        assert PosixPlatform().on_session_end(loop, seen.append, threading.Event())
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
        finally:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return seen

    assert asyncio.run(scenario()) == ["SIGHUP"]


@pytest.mark.parametrize("event", [2, 5, 6])  # console closed, logoff, shutdown
def test_a_console_event_starts_the_stop_and_waits_for_it(event: int) -> None:
    stopped, asked = threading.Event(), []

    def stop(name: str) -> None:
        asked.append(name)
        threading.Timer(0.2, stopped.set).start()  # the VM powers off a moment later

    began = time.monotonic()
    assert console_handler(stop, stopped, grace=5.0)(event) is True
    assert asked == [CONSOLE_EVENTS[event]]
    assert 0.15 < time.monotonic() - began < 4.0  # held until the VM was down, not the whole grace


def test_a_console_event_returns_after_the_grace_when_the_stop_hangs() -> None:
    began = time.monotonic()
    assert console_handler(lambda name: None, threading.Event(), grace=0.3)(6) is True
    assert time.monotonic() - began < 2.0


def test_unknown_console_events_go_to_the_next_handler() -> None:
    assert console_handler(lambda name: None, threading.Event(), grace=0.1)(99) is False
