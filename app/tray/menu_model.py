"""Which menu entries exist for a given state: the tray's menu is rendered from this list.

The menu is rebuilt from this model on every `aboutToShow`, so it never shows a stale action.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from app.tray.status_text import context_command, status_line
from hypervisor.control import Status


class Action(enum.Enum):
    START = "Start"
    STOP = "Stop"
    RESTART = "Restart"
    RESET = "Reset VM…"
    SETTINGS = "Settings…"
    DASHBOARD = "Dashboard…"
    COPY_CONTEXT = "copy-context"
    COPY_DOCKER_HOST = "Copy DOCKER_HOST"
    OPEN_LOGS = "Open logs folder"
    TROUBLESHOOT = "Troubleshoot…"
    QUIT = "Quit Pinnace"


@dataclass(frozen=True)
class MenuEntry:
    """One row: an action, the disabled status line (action None), or a separator."""

    text: str = ""
    action: Action | None = None
    enabled: bool = True
    separator: bool = False


SEPARATOR = MenuEntry(separator=True)

# Lifecycle actions that make sense in each state; anything not listed is hidden, not greyed.
LIFECYCLE: dict[str, tuple[Action, ...]] = {
    "stopped": (Action.START,),
    "starting": (Action.STOP,),
    "running": (Action.STOP, Action.RESTART),
    "stopping": (),
    "error": (Action.START, Action.STOP),
    # QEMU paused a live VM (e.g. the host disk is full): Start resumes it, the rest work as usual.
    "paused": (Action.START, Action.STOP, Action.RESTART),
}
# Per-state wording for an action whose operation means something else in that state.
ACTION_LABELS: dict[tuple[str, Action], str] = {("paused", Action.START): "Resume"}
# States where the agent can reset the VM (it stops a running or paused one first).
RESET_STATES = ("running", "paused", "stopped", "error")


def effective_state(status: Status | None) -> str:
    return "stopped" if status is None else status.state


def lifecycle_actions(status: Status | None, busy: bool = False) -> tuple[Action, ...]:
    """No lifecycle actions while one we asked for is still in flight."""
    if busy:
        return ()
    return LIFECYCLE.get(effective_state(status), (Action.START,))


def action_label(action: Action, state: str) -> str:
    return ACTION_LABELS.get((state, action), action.value)


def build_menu(status: Status | None, instance: str = "default", busy: bool = False) -> list[MenuEntry]:
    state = effective_state(status)
    entries = [MenuEntry(status_line(status), enabled=False), SEPARATOR]
    entries += [MenuEntry(action_label(a, state), a) for a in lifecycle_actions(status, busy)]
    reset_ok = not busy and state in RESET_STATES
    entries += [
        MenuEntry(Action.RESET.value, Action.RESET, enabled=reset_ok),
        SEPARATOR,
        MenuEntry(Action.SETTINGS.value, Action.SETTINGS),
        MenuEntry(Action.DASHBOARD.value, Action.DASHBOARD),
        SEPARATOR,
        MenuEntry(f"Copy `{context_command(instance)}`", Action.COPY_CONTEXT),
        MenuEntry(Action.COPY_DOCKER_HOST.value, Action.COPY_DOCKER_HOST),
        MenuEntry(Action.OPEN_LOGS.value, Action.OPEN_LOGS),
        # in every state, busy or not: diagnosing is most needed when nothing else works
        MenuEntry(Action.TROUBLESHOOT.value, Action.TROUBLESHOOT),
        SEPARATOR,
        MenuEntry(Action.QUIT.value, Action.QUIT),
    ]
    return entries


def icon_state(status: Status | None) -> str:
    """The five icon families: stopping shows as starting (something is in motion); a state this
    tray does not know yet shows as stopped."""
    state = effective_state(status)
    if state in ("starting", "stopping"):
        return "starting"
    return state if state in ("running", "paused", "error") else "stopped"
