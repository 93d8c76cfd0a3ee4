"""QEMU's exit is awaited on a pidfd where Linux has one: no polling while the VM runs, and the
exit seen as it happens."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from hypervisor.agent.qemu_driver import _exit_event

pytestmark = [pytest.mark.timeout(30),
              pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfd is Linux's")]


def test_the_exit_is_seen_when_it_happens() -> None:
    child = subprocess.Popen(["sleep", "0.5"])
    began = time.monotonic()
    assert asyncio.run(_exit_event(child.pid)) is True
    took = time.monotonic() - began
    assert 0.4 < took < 3.0
    assert child.wait(5) == 0


def test_a_pid_already_gone_is_an_exit() -> None:
    child = subprocess.Popen(["true"])
    child.wait(5)
    assert asyncio.run(_exit_event(child.pid)) is True
