"""The guest's wall clock kept on the host's (issue #14): the pure pieces the agent uses.

A paused VM's clock stops (QMP stop/cont, and a host that sleeps stops QEMU with it), so after a
resume or a host wake the guest — and every container, which shares its kernel clock — is behind
by as long as it was stopped. Two mechanisms bring it back:

- the guest's `clock` service (vmimage/guest/clock) compares the system clock with QEMU's RTC,
  which follows the host's wall clock (`-rtc clock=host`, QEMU's default), every 10 s and steps
  the clock when it is more than 1 s off: the fallback that needs nothing from the host;
- the agent, which notices the resume (QMP's RESUME event) or a host sleep (`WakeDetector`) and
  sets the guest clock at once over its SSH link (`set_clock_command`), to well under a second.

What the guest offers (busybox 1.37 as Debian builds it, root's login shell being busybox sh):
`date -s @SECONDS` takes whole seconds only (no fraction after the @) and sets the nanoseconds
to 0; `date +%N` is not supported (printed literally); busybox sh's `$EPOCHREALTIME` gives the
wall clock in microseconds with no fork; `sleep` takes fractions. So the set command sleeps in
the guest until the host's next whole second, then sets that second; and the guest time is read
with `echo "$EPOCHREALTIME"`. busybox `date -s` exits 0 even when the kernel refuses the time,
so the set command prints the guest time afterwards, and `ClockSet.took_effect` checks it.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

# Runs in the guest's login shell (busybox sh): the guest's wall clock, seconds.microseconds.
GUEST_TIME_COMMAND = 'echo "$EPOCHREALTIME"'

# The guest's RTC (seconds, host-driven) and how far past a set's target second it may read before
# the set is stale (1 s resolution, and x86's CMOS RTC lags the host by up to a second).
GUEST_RTC = "/sys/class/rtc/rtc0/since_epoch"
STALE_AFTER_S = 2

# QMP events after which the guest's clock is behind the host's: the VM ran again after a stop.
RESUME_EVENTS = frozenset({"RESUME"})

# Larger gaps between the wall clock and the steady clock mean a host sleep or a wall-clock step
# (NTP slewing moves it by at most 0.5 ms/s, far below this).
JUMP_THRESHOLD_S = 2.0

_GUEST_TIME = re.compile(r"\d{1,12}(?:\.\d{1,9})?")


def parse_guest_time(output: str | bytes) -> float:
    """The guest's wall clock from GUEST_TIME_COMMAND's output (the last non-empty line)."""
    text = output.decode("ascii", "replace") if isinstance(output, bytes) else output
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not _GUEST_TIME.fullmatch(lines[-1]):
        raise ValueError(f"not a guest time (seconds.microseconds): {text.strip()[:80]!r}")
    return float(lines[-1])


@dataclass(frozen=True)
class ClockOffset:
    """How far the guest's clock is from the host's: positive when the guest is ahead."""

    offset: float
    # Half the round trip: the guest read its clock somewhere between sending and receiving,
    # so the true offset lies within offset ± uncertainty.
    uncertainty: float

    def within(self, tolerance: float) -> bool:
        """Whether the guest is certainly no more than `tolerance` seconds off."""
        return abs(self.offset) + self.uncertainty <= tolerance


def parse_offset(output: str | bytes, sent: float, received: float) -> ClockOffset:
    """The guest clock's offset from GUEST_TIME_COMMAND's output.

    `sent` and `received` are the host's wall clock (time.time()) just before the command was
    sent and when its output arrived; the guest's reading is compared with their midpoint.
    """
    if received < sent:
        raise ValueError(f"received ({received}) before sent ({sent})")
    guest = parse_guest_time(output)
    return ClockOffset(offset=guest - (sent + received) / 2, uncertainty=(received - sent) / 2)


@dataclass(frozen=True)
class ClockSet:
    """A guest command that sets the guest's clock to the host's `target` second at that second."""

    command: str
    target: int  # the whole second (Unix time) the guest's clock is set to
    delay: float  # how long the guest sleeps first: the command takes that long and a bit more

    def took_effect(self, output: str | bytes, tolerance: float = 0.5) -> bool:
        """Whether the guest's clock, printed right after setting it, is at the target second.

        Needed because busybox `date -s` exits 0 even when the kernel refuses the time.
        """
        try:
            after = parse_guest_time(output)
        except ValueError:
            return False
        return self.target <= after <= self.target + tolerance


def set_clock_command(now: float, latency: float = 0.0) -> ClockSet:
    """The command that sets the guest's clock to the host's, to a few milliseconds.

    `now` is the host's wall clock (time.time()) taken just before the command is sent, and
    `latency` how long it takes from then until the guest's shell runs it (half a measured round
    trip is a fair estimate; 0 leaves the guest that much behind). busybox `date -s` sets whole
    seconds only, so the guest sleeps until the host's next whole second, then sets it; the
    sleep runs on the guest's monotonic clock, which a wrong wall clock does not disturb. The
    command prints the guest's clock afterwards, for `ClockSet.took_effect`.
    """
    if latency < 0:
        raise ValueError(f"latency must not be negative: {latency}")
    arrives = now + latency
    target = math.floor(arrives) + 1
    delay = target - arrives
    # A command delivered late (the VM paused between sending and running it: its clocks stood
    # still, so it cannot tell) would set an old time: the RTC, which follows the host through a
    # pause, says so, and the command gives up (exit 4) instead.
    stale = f'r=$(cat {GUEST_RTC} 2>/dev/null); [ -n "$r" ] && [ "$r" -gt {target + STALE_AFTER_S} ] && exit 4; '
    command = f'sleep {delay:.6f}; {stale}date -u -s @{target} >/dev/null; echo "$EPOCHREALTIME"'
    return ClockSet(command=command, target=target, delay=delay)


def _boot_clock() -> float | None:
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is None:
        return None
    try:
        return time.clock_gettime(clock_id)
    except OSError:
        return None


@dataclass(frozen=True)
class ClockSample:
    """The host's clocks read at one moment, for WakeDetector.

    wall: time.time(), what QEMU's RTC follows. steady: time.monotonic(), which never follows
    wall-clock steps and stops while the host sleeps on Linux (CLOCK_MONOTONIC) and macOS
    (mach_absolute_time); on Windows it may keep counting through a sleep, which then shows as
    a stall (see WakeDetector). boot: Linux's CLOCK_BOOTTIME, which counts the sleep too, so
    boot - steady grows by exactly the time slept, whatever the wall clock does; None elsewhere.
    """

    wall: float
    steady: float
    boot: float | None = None

    @classmethod
    def now(cls) -> ClockSample:
        """The host's clocks now (the one reading in this module)."""
        return cls(wall=time.time(), steady=time.monotonic(), boot=_boot_clock())


@dataclass(frozen=True)
class ClockEvent:
    """A reason to set the guest's clock now.

    kind: "suspend" (the host slept, as CLOCK_BOOTTIME tells), "wall-jump" (the wall clock moved
    against the steady clock: a sleep where that stops, or the host's clock was stepped, either
    way), or "stall" (longer than expected between samples: a sleep on a host whose steady clock
    counts it, or the agent itself was stopped). seconds: how much (negative: wall clock stepped
    back).
    """

    kind: str
    seconds: float


@dataclass
class WakeDetector:
    """Notices host sleep and wake, and host wall-clock steps, from successive ClockSamples.

    Feed it a sample every few seconds (`observe(ClockSample.now())`); any event it reports means
    the guest's clock is no longer the host's. `interval` is the expected time between samples;
    without it, stalls are not reported.
    """

    threshold: float = JUMP_THRESHOLD_S
    interval: float | None = None
    last: ClockSample | None = None

    def observe(self, sample: ClockSample) -> ClockEvent | None:
        previous, self.last = self.last, sample
        if previous is None:
            return None
        steady = sample.steady - previous.steady
        if sample.boot is not None and previous.boot is not None:
            slept = (sample.boot - previous.boot) - steady
            if slept > self.threshold:
                return ClockEvent("suspend", slept)
        jump = (sample.wall - previous.wall) - steady
        if abs(jump) > self.threshold:
            return ClockEvent("wall-jump", jump)
        if self.interval is not None and steady - self.interval > self.threshold:
            return ClockEvent("stall", steady - self.interval)
        return None
