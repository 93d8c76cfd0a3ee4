"""Which status changes deserve a desktop notification: only those the user did not ask for.

`expected` is the lifecycle operation the user started from the tray (or None); a stop after
the user clicked Stop is news to nobody, an engine that dies on its own is.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.tray.status_text import one_line
from hypervisor.control import Status

# The states each user operation may legitimately pass through.
EXPECTED_STATES = {
    "start": {"starting", "running"},
    "stop": {"stopping", "stopped"},
    "restart": {"stopping", "stopped", "starting", "running"},
    "reset": {"stopping", "stopped", "starting", "running"},
}


@dataclass(frozen=True)
class Notice:
    title: str
    message: str
    critical: bool = False


def notice_for(prev: Status | None, new: Status | None, expected: str | None) -> Notice | None:
    """`new` None means the agent went away (its watch stream ended)."""
    old_state = prev.state if prev else "stopped"
    new_state = new.state if new else "stopped"
    if old_state == new_state:
        return None
    reason = one_line(new.reason) if new and new.reason else ""
    if new_state == "error":
        if expected == "start" or old_state == "starting":
            return Notice("Pinnace could not start", reason or "the VM failed to start", critical=True)
        return Notice("Pinnace VM error", reason or "the VM reported an error", critical=True)
    if expected is not None and new_state in EXPECTED_STATES.get(expected, set()):
        return None
    if old_state == "running" and new_state in ("stopping", "stopped"):
        return Notice("Docker engine stopped unexpectedly", reason or "the VM is no longer running", True)
    if old_state == "starting" and new_state == "stopped":
        return Notice("Pinnace could not start", reason or "the VM stopped while starting", critical=True)
    return None


def settled(expected: str | None, status: Status | None) -> bool:
    """True once an expected operation reached its end state (so later changes are news again)."""
    state = status.state if status else "stopped"
    if expected is None:
        return True
    if state == "error":
        return True
    return state == ("stopped" if expected == "stop" else "running")


def start_failed(reason: str) -> Notice:
    return Notice("Pinnace could not start", one_line(reason) or "unknown error", critical=True)
