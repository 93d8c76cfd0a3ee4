"""The guest's wall clock kept on the host's, from the agent's side (issue #14).

A VM paused by QEMU (a full disk, the user's `pinnace pause`) or stopped with a sleeping host
comes back with its clock behind by as long as it was stopped, and every container with it. The
guest's own `clock` service steps it back onto QEMU's RTC within ~10 s (to a second); the agent
does better: it sets the clock over its SSH link at once, to a few milliseconds, when the VM
resumes (QMP RESUME), when the host wakes or its clock jumps (guest_clock.WakeDetector), after a
boot, and when a periodic check finds it more than CHECK_TOLERANCE_S off. The offset is published
in the status (`clock_offset_s`), and `clock_warning` says when it cannot be corrected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from hypervisor.agent.status_board import StatusBoard
from hypervisor.errors import MachineError
from hypervisor.guest_clock import (
    GUEST_TIME_COMMAND,
    ClockOffset,
    ClockSample,
    WakeDetector,
    parse_offset,
    set_clock_command,
)

log = logging.getLogger("pinnace.agent")

SAMPLE_S = 5.0  # how often the host's clocks are compared (a wake is noticed this soon)
CHECK_S = 20.0  # how often the guest's offset is measured over SSH (one tiny command, ~10 ms)
CHECK_TOLERANCE_S = 0.5  # a measured offset beyond this is corrected
COMMAND_TIMEOUT_S = 10.0
SET_ATTEMPTS = 3

OpenCommand = Callable[[str], Any]  # EngineLink.open_guest_command: a channel running the command


def run_guest_command(open_command: OpenCommand, command: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """A short command's output over the shared SSH transport (blocking: run it on a thread)."""
    channel = open_command(command)
    try:
        channel.settimeout(timeout)
        channel.shutdown_write()
        out = b""
        while chunk := channel.recv(4096):
            out += chunk
        return out.decode("ascii", "replace")
    finally:
        channel.close()


class ClockKeeper:
    def __init__(self, open_command: OpenCommand, board: StatusBoard,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self.open_command, self.board, self.paused = open_command, board, paused
        self.detector = WakeDetector(interval=SAMPLE_S)
        self._lock = asyncio.Lock()

    def measure(self) -> ClockOffset:
        sent = time.time()
        out = run_guest_command(self.open_command, GUEST_TIME_COMMAND)
        return parse_offset(out, sent, time.time())

    def _set(self) -> ClockOffset:
        """Set the guest's clock to the host's, then measure what it became. A loaded guest may run
        the command late (the guest then refuses it: guest_clock.set_clock_command) or report
        slowly: measured again and tried again, a few times."""
        offset = self.measure()
        for _ in range(SET_ATTEMPTS):
            if offset.within(CHECK_TOLERANCE_S / 5):
                return offset
            order = set_clock_command(time.time(), latency=offset.uncertainty)
            out = run_guest_command(self.open_command, order.command, COMMAND_TIMEOUT_S + order.delay)
            after = self.measure()
            if order.took_effect(out) or after.within(CHECK_TOLERANCE_S / 5):
                log.info("guest clock set: it was %+.3f s off, now %+.3f s", offset.offset, after.offset)
                return after
            log.info("the guest clock was not set (it answered %r): trying again", out.strip()[-40:])
            offset = after
        raise MachineError(f"the guest did not take the time in {SET_ATTEMPTS} attempts "
                           f"(it is {offset.offset:+.3f} s off)")

    async def sync(self, why: str, force: bool = True) -> None:
        """Measure, and set the guest clock when `force` or when it is off; publish the offset."""
        async with self._lock:
            if self.paused():  # a paused guest answers nothing; its resume brings a sync of its own
                return
            loop = asyncio.get_running_loop()
            try:
                if force:
                    log.info("setting the guest clock (%s)", why)
                    offset = await loop.run_in_executor(None, self._set)
                else:
                    offset = await loop.run_in_executor(None, self.measure)
                    if not offset.within(CHECK_TOLERANCE_S):
                        log.warning("guest clock %+.3f s off the host's (%s): setting it", offset.offset, why)
                        offset = await loop.run_in_executor(None, self._set)
            except Exception as exc:  # noqa: BLE001 - SSH's own errors too: a paused guest is no bug
                log.warning("cannot set the guest clock (%s): %s", why, exc or type(exc).__name__)
                self.board.update(clock_warning=f"the guest clock could not be set ({why}): {exc}")
                return
            self.board.update(clock_offset_s=round(offset.offset, 3), clock_warning="")

    async def follow(self) -> None:
        """For the VM's life: set the clock now, then after host sleeps and clock jumps, and
        whenever a periodic check finds it off."""
        await self.sync("after boot")
        since_check = 0.0
        while True:
            self.detector.last = ClockSample.now()  # only the sleep is judged, not our own syncs
            await asyncio.sleep(SAMPLE_S)
            event = self.detector.observe(ClockSample.now())
            since_check += SAMPLE_S
            if event is not None:
                await self.sync(f"host {event.kind} of {event.seconds:+.0f} s")
                since_check = 0.0
            elif since_check >= CHECK_S:
                await self.sync("periodic check", force=False)
                since_check = 0.0
