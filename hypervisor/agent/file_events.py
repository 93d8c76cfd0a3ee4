"""Host file changes carried into the guest's inotify: what hot-reload tools in containers wait for.

A shared folder shows the guest what the host wrote, but the guest kernel's inotify only hears of
changes made through it. So the agent watches, on the host (watchdog: inotify, FSEvents,
ReadDirectoryChangesW), the trees that running containers bind-mount from the shares — not every
share: $HOME is shared whole and may hold millions of files — and writes one line per change to
the guest kernel's /proc/pinnace-fsnotify (vmimage/kernel/pinnace_fsnotify.c), which delivers the
event to the guest's watchers without touching the file:

    host IN_MODIFY         -> M: IN_MODIFY + IN_CLOSE_WRITE in the guest
    host IN_ATTRIB         -> A: IN_ATTRIB
    host create / mkdir    -> C: IN_CREATE (| IN_ISDIR)
    host delete / rmdir    -> D / X: IN_DELETE (| IN_ISDIR)
    host rename            -> delete of the old name + create of the new one (no IN_MOVED_* pair)

Changes a container itself makes through the share reach its watchers twice (once from the
guest's own VFS, once replayed): watchers debounce, and telling them apart would need the
writer's pid, which inotify does not give.
"""

from __future__ import annotations

import logging
import posixpath
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from hypervisor.mounts import GuestShare, covering

log = logging.getLogger("pinnace.agent")

REPLAY_FILE = "/proc/pinnace-fsnotify"
GUEST_COMMAND = f"test -w {REPLAY_FILE} && exec cat > {REPLAY_FILE}"
BATCH_S = 0.01  # lines gathered this long go in one write
OPEN_CHECK_S = 2.0  # how long a new guest writer is given to fail before it counts as working
# What the host watch asks the OS for: no opens, closes or reads (a busy tree would flood us).
WATCHED = [FileModifiedEvent, FileAttribEvent, FileCreatedEvent, DirCreatedEvent, FileDeletedEvent,
           DirDeletedEvent, FileMovedEvent, DirMovedEvent]

OpenSession = Callable[[str], Any]  # a guest command -> a channel whose stdin we write (paramiko)


def _line(op: str, path: str) -> str | None:
    if not path.startswith("/") or "\n" in path:
        return None
    return f"{op} {path}\n"


def replay_lines(event: FileSystemEvent) -> list[str]:
    """The /proc/pinnace-fsnotify lines for one host event (pure)."""
    src = str(event.src_path)
    if isinstance(event, (FileMovedEvent, DirMovedEvent)):
        lines = [_line("X" if event.is_directory else "D", src), _line("C", str(event.dest_path))]
    elif isinstance(event, FileModifiedEvent):
        lines = [_line("M", src)]
    elif isinstance(event, FileAttribEvent):
        lines = [_line("A", src)]
    elif isinstance(event, (FileCreatedEvent, DirCreatedEvent)):
        lines = [_line("C", src)]
    elif isinstance(event, DirDeletedEvent):
        lines = [_line("X", src)]
    elif isinstance(event, FileDeletedEvent):
        lines = [_line("D", src)]
    else:
        lines = []
    return [line for line in lines if line]


def watch_roots(sources: Iterable[str], shares: Iterable[GuestShare]) -> set[str]:
    """The host trees to watch for these bind-mount sources: those inside a share, none nested in
    another (one recursive watch covers it)."""
    listed = list(shares)
    inside = sorted({posixpath.normpath(s) for s in sources if s and covering(s, listed) is not None})
    roots: set[str] = set()
    for path in inside:  # sorted: a parent comes before its children
        if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots):
            roots.add(path)
    return roots


class _Handler(FileSystemEventHandler):
    def __init__(self, relay: FileEventRelay) -> None:
        self.relay = relay

    def on_any_event(self, event: FileSystemEvent) -> None:
        for line in replay_lines(event):
            self.relay.lines.put(line)


class FileEventRelay:
    """Recursive host watches on the bind-mounted trees, replayed in the guest by one sender."""

    def __init__(self, open_session: OpenSession, shares: Iterable[GuestShare]) -> None:
        self.open_session = open_session
        self.shares = list(shares)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._observer = Observer()
        self._observer.daemon = True
        self._watches: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._sender = threading.Thread(target=self._send_loop, name="file-events", daemon=True)
        self._closed = threading.Event()
        self.unavailable = ""  # why the guest cannot replay events (an image without the kernel part)

    def start(self) -> None:
        self._observer.start()
        self._sender.start()

    @property
    def trees(self) -> list[str]:
        with self._lock:
            return sorted(self._watches)

    def follow(self, sources: Iterable[str]) -> None:
        """Watch exactly the trees these bind sources need (thread-safe; called on every port sync)."""
        wanted = watch_roots(sources, self.shares)
        with self._lock:
            if self._closed.is_set():
                return
            for path in set(self._watches) - wanted:
                self._observer.unschedule(self._watches.pop(path))
                log.info("file events: no longer watching %s", path)
            for path in sorted(wanted - set(self._watches)):
                started = time.monotonic()
                try:
                    self._watches[path] = self._observer.schedule(_Handler(self), path, recursive=True,
                                                                  event_filter=WATCHED)
                except OSError as exc:  # gone, unreadable, or out of inotify watches
                    log.warning("file events: cannot watch %s: %s", path, exc)
                    continue
                log.info("file events: watching %s (%.2f s to set up)", path, time.monotonic() - started)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self.lines.put(None)
            try:
                self._observer.unschedule_all()
                self._observer.stop()
            except (OSError, RuntimeError) as exc:
                log.warning("file events: stopping the watches: %s", exc)
            self._watches.clear()

    # --- the guest side ----------------------------------------------------------------------

    def _send_loop(self) -> None:
        channel = None
        while not self._closed.is_set():
            if channel is None:
                channel = self._open()
                if channel is None:
                    return
            batch = self._next_batch()
            if batch is None:
                break
            try:
                channel.sendall(batch.encode(errors="surrogateescape"))
            except Exception as exc:  # noqa: BLE001 - paramiko's errors vary; events are best effort
                log.info("file events: the guest side went away (%s); reconnecting", exc)
                channel = None
        if channel is not None:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - closing a dead channel
                pass

    def _next_batch(self) -> str | None:
        first = self.lines.get()
        if first is None:
            return None
        batch, seen = [first], {first}
        deadline = time.monotonic() + BATCH_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            if line.startswith("M ") and line in seen:  # a burst of writes to one file: one event
                continue
            seen.add(line)
            batch.append(line)
        return "".join(batch)

    def _open(self) -> Any:
        """The guest's writer, or None when the guest cannot replay events (or we are closing)."""
        delay = 0.5
        while not self._closed.is_set():
            try:
                channel = self.open_session(GUEST_COMMAND)
            except Exception as exc:  # noqa: BLE001 - SSH down for a moment (sshd restart, sleep)
                log.info("file events: cannot reach the guest: %s", exc)
                self._closed.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            # `test -w` fails at once on an image without the kernel part; cat never exits by itself.
            if channel.status_event.wait(OPEN_CHECK_S) and channel.recv_exit_status() != 0:
                self.unavailable = f"the guest kernel has no {REPLAY_FILE} (an older image)"
                log.warning("file events: %s; changes made on the host will not reach inotify in containers",
                            self.unavailable)
                return None
            return channel
        return None
