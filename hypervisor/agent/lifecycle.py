"""The instance lifecycle as an explicit state machine, so the agent, the CLI and the tray agree.

Only the transitions in ALLOWED are legal; anything else raises StateError, which catches bugs
such as "start" racing a "stop" instead of letting them corrupt the state.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable

from hypervisor.errors import StateError

log = logging.getLogger(__name__)


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ERROR = "error"
    PAUSED = "paused"  # QEMU stopped the VM (a full host disk, a QMP stop): alive, not serving


ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.STOPPING, State.ERROR, State.STOPPED}),
    # RUNNING -> STOPPED: QEMU exited on its own (guest poweroff, crash, -no-reboot reset).
    State.RUNNING: frozenset({State.STOPPING, State.ERROR, State.STOPPED, State.PAUSED}),
    State.PAUSED: frozenset({State.RUNNING, State.STOPPING, State.ERROR, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED, State.ERROR}),
    State.ERROR: frozenset({State.STARTING, State.STOPPING, State.STOPPED}),
}

Listener = Callable[[State, State, str], None]


def can_transition(old: State, new: State) -> bool:
    return new in ALLOWED[old]


class Lifecycle:
    """Thread-safe current state; listeners run after each transition, outside the lock."""

    def __init__(self, initial: State = State.STOPPED) -> None:
        self._lock = threading.Lock()
        self._state = initial
        self._reason = ""
        self._listeners: list[Listener] = []

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    @property
    def reason(self) -> str:
        with self._lock:
            return self._reason

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Register `callback(old, new, reason)`; returns a function that unsubscribes it."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def transition(self, new: State, reason: str = "") -> State:
        """Move to `new` or raise StateError; returns the previous state."""
        with self._lock:
            old = self._state
            if not can_transition(old, new):
                raise StateError(f"cannot go from {old.value} to {new.value}")
            self._state = new
            self._reason = reason
            listeners = list(self._listeners)
        log.info("state %s -> %s%s", old.value, new.value, f" ({reason})" if reason else "")
        for listener in listeners:
            try:
                listener(old, new, reason)
            except Exception:  # a broken UI callback must not break the lifecycle
                log.exception("state listener %r failed", listener)
        return old
