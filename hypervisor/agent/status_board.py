"""The status board: the one owner of an instance's Status and of its publication.

Every part of the agent reports through it (a stage, a fact, a state change); it alone writes the
Status value, mirrors it to state.json (the agent's last words for when no agent runs) and hands
each change to the watchers of the control API. The lifecycle's rules (lifecycle.ALLOWED) are
checked here, on every state change, so no part can publish an illegal one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypervisor import platform as host_platform
from hypervisor.agent.lifecycle import Lifecycle, State
from hypervisor.control import Status
from hypervisor.errors import StateError

log = logging.getLogger("pinnace.agent")

Watcher = asyncio.Queue  # of Status, then None when the agent goes away


class StatusBoard:
    def __init__(self, status: Status, state_file: Path, initial: State = State.STOPPED) -> None:
        self._status = status
        self._status.state = initial.value
        self.state_file = state_file
        self.lifecycle = Lifecycle(initial)
        self._watchers: set[Watcher] = set()

    # --- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def status(self) -> Status:
        """A copy: nobody but the board changes the value."""
        return Status.from_dict(self._status.to_dict())

    def get(self, field: str) -> Any:
        return getattr(self._status, field)

    # --- writing ---------------------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        """Set facts (accel, pids, shares, ...); published when anything changed."""
        changed = False
        for name, value in fields.items():
            if name in ("state", "reason") or name not in Status.__dataclass_fields__:
                raise ValueError(f"not a status fact: {name}")
            if getattr(self._status, name) != value:
                setattr(self._status, name, value)
                changed = True
        if changed:
            self.publish()

    def updater(self, name: str) -> Callable[[Any], None]:
        """`update(name=value)` for a part that reports from its own thread (the socket carrier,
        the host ssh-agent forward): run on the loop this is made on, so a snapshot read on that
        thread is never published after a newer state (a crash's `error`). Dropped once the loop
        has closed: the agent is ending."""
        loop = asyncio.get_running_loop()

        def report(value: Any) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(functools.partial(self.update, **{name: value}))

        return report

    def stage(self, text: str) -> None:
        if self._status.stage != text:
            log.info("stage: %s", text)
            self.update(stage=text)

    def to(self, state: State, reason: str = "") -> None:
        """Move the lifecycle (StateError if the move is illegal) and publish; the same state
        again only updates the reason."""
        if self.lifecycle.state is not state:
            self.lifecycle.transition(state, reason)
        self._status.state, self._status.reason = state.value, reason
        self.publish()

    def try_to(self, state: State, reason: str = "") -> bool:
        """`to`, for failure paths that must not raise over the failure they report."""
        try:
            self.to(state, reason)
            return True
        except StateError as exc:
            log.warning("%s (while reporting: %s)", exc, reason)
            return False

    def publish(self) -> None:
        snapshot = self._status.to_dict()
        try:
            self._save(snapshot)
        except OSError as exc:  # a wiped runtime or state dir must not stop the agent reporting
            log.warning("cannot write %s: %s", self.state_file, exc)
        for queue in list(self._watchers):
            queue.put_nowait(Status.from_dict(snapshot))

    def _save(self, snapshot: dict[str, Any]) -> None:
        host_platform.current().write_private_text(self.state_file, json.dumps(snapshot, indent=1))

    # --- watchers --------------------------------------------------------------------------

    def watch(self) -> Watcher:
        """A queue that gets the status now and after every change; None when the board closes."""
        queue: Watcher = asyncio.Queue()
        self._watchers.add(queue)
        queue.put_nowait(self.status)
        return queue

    def unwatch(self, queue: Watcher) -> None:
        self._watchers.discard(queue)

    def close(self) -> None:
        for queue in list(self._watchers):
            queue.put_nowait(None)
