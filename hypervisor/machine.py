"""The instance lifecycle as an explicit state machine, so CLI, tray and agent agree on it.

Only the transitions in ALLOWED are legal; everything else raises StateError, which catches
bugs such as "start" racing a "stop" instead of letting them corrupt the state.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hypervisor.errors import StateError

log = logging.getLogger(__name__)


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ERROR = "error"


ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.STOPPING, State.ERROR, State.STOPPED}),
    # RUNNING -> STOPPED: QEMU exited on its own (guest poweroff, crash, -no-reboot reset).
    State.RUNNING: frozenset({State.STOPPING, State.ERROR, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED, State.ERROR}),
    State.ERROR: frozenset({State.STARTING, State.STOPPED}),
}

Listener = Callable[[State, State, str], None]


def can_transition(old: State, new: State) -> bool:
    return new in ALLOWED[old]


@dataclass(frozen=True)
class Snapshot:
    """A consistent read of the lifecycle (state, reason and since from the same moment)."""

    state: State
    reason: str
    since: float


class Lifecycle:
    """Thread-safe current state + history; listeners run after each transition, outside the lock."""

    def __init__(self, initial: State = State.STOPPED, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._state = initial
        self._reason = ""
        self._since = clock()
        self._history: list[State] = [initial]
        self._listeners: list[Listener] = []

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    @property
    def reason(self) -> str:
        with self._lock:
            return self._reason

    @property
    def since(self) -> float:
        with self._lock:
            return self._since

    @property
    def history(self) -> list[State]:
        with self._lock:
            return list(self._history)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._state, self._reason, self._since)

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
            self._since = self._clock()
            self._history.append(new)
            listeners = list(self._listeners)
        log.info("state %s -> %s%s", old.value, new.value, f" ({reason})" if reason else "")
        for listener in listeners:
            try:
                listener(old, new, reason)
            except Exception:  # a broken UI callback must not break the lifecycle
                log.exception("state listener %r failed", listener)
        return old

    def reset(self, reason: str = "reset") -> None:
        """Force STOPPED from any state (e.g. the agent found QEMU gone); no-op when already stopped."""
        with self._lock:
            if self._state is State.STOPPED:
                return
        self.transition(State.STOPPED, reason)
