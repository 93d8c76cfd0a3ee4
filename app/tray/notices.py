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


# A notification wraps, so it keeps more of a reason than the menu's one line (whose cut would drop
# e.g. the "not restarted again" of a long crash reason).
NOTICE_MAX = 200

# The agent's words for its automatic restart after a QEMU crash (issue #13): the error while it
# waits to restart, the boot of that restart, and the error after which it gives up.
CRASH_RESTARTING = "restarting in"
CRASH_REBOOTING = "restarting after a crash"
CRASH_GAVE_UP = "not restarted again"

CLOCK_TITLE = "Pinnace could not set the guest clock"
IMAGE_UPDATED_TITLE = "Pinnace guest image updated"
IMAGE_ROLLED_BACK_TITLE = "Pinnace rolled back the guest image"


@dataclass(frozen=True)
class Notice:
    title: str
    message: str
    critical: bool = False
    warning: bool = False  # needs attention, but nothing failed for good (a paused VM, a crash restart)


def restarting_after_crash(status: Status | None) -> bool:
    """The agent is recovering from a crash on its own: waiting to restart (error) or booting (starting)."""
    if status is None:
        return False
    if status.state == "error":
        return CRASH_RESTARTING in status.reason and CRASH_GAVE_UP not in status.reason
    return status.state == "starting" and CRASH_REBOOTING in status.reason


def notice_for(prev: Status | None, new: Status | None, expected: str | None) -> Notice | None:
    """`new` None means the agent went away (its watch stream ended)."""
    old_state = prev.state if prev else "stopped"
    new_state = new.state if new else "stopped"
    # error -> error is news only when a crash restart ends without booting (e.g. it gave up).
    restart_ended = new_state == "error" and restarting_after_crash(prev) and not restarting_after_crash(new)
    if old_state == new_state and not restart_ended:
        return None
    reason = one_line(new.reason, NOTICE_MAX) if new and new.reason else ""
    if new is not None and new_state == "error":
        return _error_notice(prev, new, reason, expected)
    if new_state == "paused":  # QEMU's doing (a full disk), never the result of a user action
        return Notice("Pinnace VM paused", reason or "QEMU paused the VM", warning=True)
    if expected is not None and new_state in EXPECTED_STATES.get(expected, set()):
        return None
    if old_state == "paused" and new_state == "running":
        return Notice("Pinnace VM resumed", "The VM resumed: Docker is available again")
    if new_state == "running" and restarting_after_crash(prev):
        return Notice("Pinnace VM restarted", "The VM was restarted after a crash")
    if old_state in ("running", "paused") and new_state in ("stopping", "stopped"):
        return Notice("Docker engine stopped unexpectedly", reason or "the VM is no longer running", True)
    if old_state == "starting" and new_state == "stopped":
        return Notice("Pinnace could not start", reason or "the VM stopped while starting", critical=True)
    return None


def _error_notice(prev: Status | None, new: Status, reason: str, expected: str | None) -> Notice:
    """Crash restarts first: their error follows a start or a restart's boot, yet is not a failed start."""
    if CRASH_GAVE_UP in new.reason:
        return Notice("Pinnace VM crashed", reason, critical=True)
    if restarting_after_crash(new):
        return Notice("Pinnace is restarting the VM after a crash", reason, warning=True)
    if restarting_after_crash(prev):
        return Notice("Pinnace could not restart the VM after a crash", reason or "unknown error", critical=True)
    if expected == "start" or (prev is not None and prev.state == "starting"):
        return Notice("Pinnace could not start", reason or "the VM failed to start", critical=True)
    return Notice("Pinnace VM error", reason or "the VM reported an error", critical=True)


def clock_notice(warned: str, new: Status | None) -> tuple[Notice | None, str]:
    """A warning when the agent could not set the guest clock (issue #14); returns it (or None)
    and the clock warning to remember as told (`warned`, "" at first).

    Once per distinct warning text: not again while it stays the same, nothing when it clears
    (the tooltip then shows the offset). Only a running VM's status counts: a paused VM's clock
    cannot be set (its pause is the news), a stopped one's last words may carry an old warning, and
    a restarted VM keeps the previous warning until its first sync; none of these change `warned`.
    """
    if new is None or new.state != "running":
        return None, warned
    warning = new.clock_warning.strip()
    if not warning or warning == warned:
        return None, warning
    return Notice(CLOCK_TITLE, one_line(warning, NOTICE_MAX), warning=True), warning


def image_notice(told: int, new: Status | None) -> tuple[Notice | None, int]:
    """The agent's one-time image message ("updated to …", "rolled back to …: image … failed: …",
    issue #19), shown once per notice id; returns it (or None) and the id to remember as told."""
    if new is None or not new.image_notice or new.image_notice_id <= told:
        return None, told
    text = one_line(new.image_notice, NOTICE_MAX)
    if "rolled back" in new.image_notice or "refused" in new.image_notice:
        return Notice(IMAGE_ROLLED_BACK_TITLE, text, warning=True), new.image_notice_id
    return Notice(IMAGE_UPDATED_TITLE, text), new.image_notice_id


def settled(expected: str | None, status: Status | None) -> bool:
    """True once an expected operation reached its end state (so later changes are news again)."""
    state = status.state if status else "stopped"
    if expected is None:
        return True
    if state == "error":
        return True
    return state == ("stopped" if expected == "stop" else "running")


def start_failed(reason: str, resuming: bool = False) -> Notice:
    """`resuming`: Start was the paused VM's Resume, so say that."""
    title = "Pinnace could not resume the VM" if resuming else "Pinnace could not start"
    return Notice(title, one_line(reason, NOTICE_MAX) or "unknown error", critical=True)
