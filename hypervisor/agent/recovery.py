"""Pure rules for riding out faults: when a crashed VM is booted again, what a pause is called,
and when a full disk has room enough to resume. The agent applies them; tests check them alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
# Room the data disk's filesystem needs before a VM paused on a full disk is resumed: enough for
# the guest to flush what it was writing, so it does not pause again at once.
RESUME_FREE_BYTES = 128 * MIB


@dataclass
class RestartPolicy:
    """A VM that crashes while running is booted again, at most `limit` times in `window_s`
    seconds, after growing delays; past that it stays in error (a crash loop helps nobody)."""

    limit: int = 3
    window_s: float = 300.0
    delays_s: tuple[float, ...] = (2.0, 5.0, 15.0)
    crashes: list[float] = field(default_factory=list)

    def next_delay(self, now: float) -> float | None:
        """Record a crash at `now`; the delay before the next boot, or None to give up."""
        self.crashes = [t for t in self.crashes if now - t < self.window_s] + [now]
        attempt = len(self.crashes)
        if attempt > self.limit:
            return None
        return self.delays_s[min(attempt, len(self.delays_s)) - 1]

    @property
    def attempt(self) -> int:
        """Which restart in the current window the last recorded crash leads to (1-based)."""
        return len(self.crashes)

    def restarting_reason(self, crash: str, delay: float) -> str:
        return f"{crash}; restarting in {delay:.0f} s ({self.attempt} of {self.limit})"

    def give_up_reason(self, crash: str) -> str:
        minutes = self.window_s / 60
        return (f"{crash}; not restarted again: it crashed {self.limit + 1} times in {minutes:.0f} minutes "
                f"(`pinnace start` boots it)")


def is_out_of_space(io_error: Mapping[str, Any] | None) -> bool:
    """A QMP BLOCK_IO_ERROR that QEMU answered by pausing because the host disk is full."""
    return bool(io_error) and bool(io_error.get("nospace")) and io_error.get("action") == "stop"


def pause_reason(io_error: Mapping[str, Any] | None, data_disk: Path, free_bytes: int | None) -> str:
    """The one line `status` and the tray show for a paused VM."""
    if is_out_of_space(io_error):
        free = "" if free_bytes is None else f" ({free_bytes // MIB} MiB free)"
        return (f"the disk holding {data_disk} is full{free}: the VM resumes by itself when "
                f"{RESUME_FREE_BYTES // MIB} MiB are free")
    if io_error:
        what = io_error.get("reason") or "an I/O error"
        return f"QEMU paused the VM after {what} on the data disk {data_disk}"
    return "paused (QEMU stopped the VM; `pinnace start` resumes it)"


def paused_engine_message(reason: str) -> str:
    """What a docker client is told while the VM is paused."""
    return f"Pinnace: the VM is paused: {reason}"
