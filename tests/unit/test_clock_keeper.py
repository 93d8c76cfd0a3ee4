"""The agent's side of the guest clock against a fake guest: the clock set after a pause, a set
the guest ran too late tried again, and the offset published (or the warning when it cannot)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from hypervisor.agent.clock_keeper import ClockKeeper
from hypervisor.agent.status_board import StatusBoard
from hypervisor.control import Status

pytestmark = pytest.mark.timeout(30)


class FakeChannel:
    def __init__(self, output: str) -> None:
        self.output = output.encode()

    def settimeout(self, timeout: float) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def recv(self, size: int) -> bytes:
        out, self.output = self.output[:size], self.output[size:]
        return out

    def close(self) -> None:
        pass


class FakeGuest:
    """A guest clock `offset` s off the host's; `late_sets` sets arrive too late (refused)."""

    def __init__(self, offset: float, late_sets: int = 0, refuses: bool = False) -> None:
        self.offset, self.late_sets, self.refuses, self.sets = offset, late_sets, refuses, 0

    def now(self) -> float:
        return time.time() + self.offset

    def open_command(self, command: str) -> FakeChannel:
        target = re.search(r"date -u -s @(\d+)", command)
        if target is None:
            return FakeChannel(f"{self.now():.6f}\n")
        self.sets += 1
        if self.late_sets:
            self.late_sets -= 1
            return FakeChannel("")  # exit 4: the RTC said the set was stale
        if not self.refuses:
            delay = float(re.search(r"sleep ([0-9.]+)", command).group(1))
            time.sleep(delay)
            self.offset = int(target.group(1)) - time.time()
        return FakeChannel(f"{self.now():.6f}\n")


def keeper(guest: FakeGuest, tmp_path: Path) -> ClockKeeper:
    return ClockKeeper(guest.open_command, StatusBoard(Status("ck"), tmp_path / "state.json"))


def test_a_guest_a_minute_behind_is_set_to_the_host(tmp_path: Path) -> None:
    guest = FakeGuest(offset=-60.0)
    k = keeper(guest, tmp_path)
    asyncio.run(k.sync("the VM resumed"))
    assert abs(guest.offset) < 0.05
    assert abs(k.board.status.clock_offset_s) < 0.05 and k.board.status.clock_warning == ""


def test_a_set_run_too_late_is_tried_again(tmp_path: Path) -> None:
    guest = FakeGuest(offset=-60.0, late_sets=1)
    asyncio.run(keeper(guest, tmp_path).sync("the VM resumed"))
    assert guest.sets == 2 and abs(guest.offset) < 0.05


def test_a_guest_that_refuses_the_time_is_a_warning(tmp_path: Path) -> None:
    guest = FakeGuest(offset=-60.0, refuses=True)
    k = keeper(guest, tmp_path)
    asyncio.run(k.sync("the VM resumed"))
    assert guest.sets == 3
    assert "could not be set (the VM resumed)" in k.board.status.clock_warning


def test_a_periodic_check_leaves_a_right_clock_alone(tmp_path: Path) -> None:
    guest = FakeGuest(offset=0.01)
    asyncio.run(keeper(guest, tmp_path).sync("periodic check", force=False))
    assert guest.sets == 0


def test_nothing_is_asked_of_a_paused_guest(tmp_path: Path) -> None:
    guest = FakeGuest(offset=-60.0)
    k = ClockKeeper(guest.open_command, StatusBoard(Status("ck"), tmp_path / "s.json"), paused=lambda: True)
    asyncio.run(k.sync("periodic check"))
    assert guest.sets == 0 and guest.offset == -60.0
