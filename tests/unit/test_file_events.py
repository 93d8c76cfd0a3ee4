"""Host file changes -> /proc/pinnace-fsnotify lines: the mapping (pure), which trees are watched,
and the relay against a real host watch (watchdog's inotify) with a stand-in for the guest side."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from hypervisor.agent import file_events
from hypervisor.agent.file_events import FileEventRelay, replay_lines, watch_roots
from hypervisor.mounts import GuestShare

pytestmark = pytest.mark.timeout(60)


def test_each_host_event_maps_to_its_replay_line() -> None:
    assert replay_lines(FileModifiedEvent("/h/a.txt")) == ["M /h/a.txt\n"]
    assert replay_lines(FileAttribEvent("/h/a.txt")) == ["A /h/a.txt\n"]
    assert replay_lines(FileCreatedEvent("/h/a.txt")) == ["C /h/a.txt\n"]
    assert replay_lines(DirCreatedEvent("/h/d")) == ["C /h/d\n"]
    assert replay_lines(FileDeletedEvent("/h/a.txt")) == ["D /h/a.txt\n"]
    assert replay_lines(DirDeletedEvent("/h/d")) == ["X /h/d\n"]
    assert replay_lines(FileMovedEvent("/h/a", "/h/b")) == ["D /h/a\n", "C /h/b\n"]
    assert replay_lines(DirMovedEvent("/h/d", "/h/e")) == ["X /h/d\n", "C /h/e\n"]
    # opens and closes are not asked for, and would not be replayed
    assert replay_lines(FileOpenedEvent("/h/a")) == [] and replay_lines(FileClosedEvent("/h/a")) == []
    # a name the line protocol cannot carry is dropped, not mangled
    assert replay_lines(FileCreatedEvent("/h/new\nline")) == []
    assert replay_lines(FileCreatedEvent("relative")) == []


def test_only_bind_sources_inside_shares_are_watched_and_never_nested() -> None:
    shares = [GuestShare("pinnace0", "/home/ann"), GuestShare("pinnace1", "/data", True)]
    sources = ["/home/ann/proj", "/home/ann/proj/src", "/home/ann/other/", "/data", "/opt/vm-only", ""]
    assert watch_roots(sources, shares) == {"/home/ann/proj", "/home/ann/other", "/data"}
    assert watch_roots(["/home/annex"], shares) == set()  # a sibling, not inside /home/ann


class FakeGuest:
    """The guest's `cat > /proc/pinnace-fsnotify`: collects what the relay writes."""

    def __init__(self, exit_status: int | None = None) -> None:
        self.data = b""
        self.commands: list[str] = []
        self.status_event = threading.Event()
        self.exit_status = exit_status
        if exit_status is not None:
            self.status_event.set()

    def __call__(self, command: str) -> FakeGuest:
        self.commands.append(command)
        return self

    def recv_exit_status(self) -> int:
        return self.exit_status or 0

    def sendall(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass

    def lines(self) -> list[str]:
        return self.data.decode().splitlines()


def wait_until(check, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_relay_replays_real_host_changes_under_a_followed_tree(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(file_events, "OPEN_CHECK_S", 0.01)
    guest = FakeGuest()
    share = tmp_path / "share"
    tree = share / "proj"
    tree.mkdir(parents=True)
    (tree / "a.txt").write_text("1")
    relay = FileEventRelay(guest, [GuestShare("pinnace0", str(share))])
    relay.start()
    try:
        relay.follow({str(tree), "/elsewhere"})
        assert relay.trees == [str(tree)]
        with (tree / "a.txt").open("a") as f:
            f.write("2")
        (tree / "sub").mkdir()
        (tree / "sub" / "b.txt").write_text("b")  # a new directory is watched too
        (tree / "a.txt").unlink()
        want = [f"M {tree}/a.txt", f"C {tree}/sub", f"C {tree}/sub/b.txt", f"D {tree}/a.txt"]
        wait_until(lambda: all(line in guest.lines() for line in want))
        assert guest.commands == [file_events.GUEST_COMMAND]
        # the container went away: the tree is no longer watched, and its changes no longer sent
        relay.follow(set())
        assert relay.trees == []
        before = len(guest.lines())
        (tree / "late.txt").write_text("x")
        time.sleep(0.3)
        assert len(guest.lines()) == before
    finally:
        relay.close()


def test_an_image_without_the_kernel_part_is_said_once(tmp_path: Path) -> None:
    guest = FakeGuest(exit_status=1)
    relay = FileEventRelay(guest, [GuestShare("pinnace0", str(tmp_path))])
    relay.start()
    try:
        wait_until(lambda: relay.unavailable != "")
        assert "pinnace-fsnotify" in relay.unavailable
        assert guest.commands == [file_events.GUEST_COMMAND]
    finally:
        relay.close()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


TREE_FILES, TREE_DIRS = 100_000, 1_000
TREE_SETUP_LIMIT_S = 30.0
TREE_RSS_LIMIT_MIB = 64
IDLE_CPU_LIMIT = 0.02  # of one core


@pytest.mark.timeout(300)
def test_a_tree_of_100k_files_costs_little(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The agent's cost of following a bind-mounted tree of 100,000 files: set-up time, memory,
    idle CPU, and that a change deep inside still arrives."""
    monkeypatch.setattr(file_events, "OPEN_CHECK_S", 0.01)
    tree = tmp_path / "big"
    for d in range(TREE_DIRS):
        sub = tree / f"d{d // 100}" / f"e{d}"
        sub.mkdir(parents=True)
        for f in range(TREE_FILES // TREE_DIRS):
            (sub / f"f{f}.js").touch()
    guest = FakeGuest()
    relay = FileEventRelay(guest, [GuestShare("pinnace0", str(tmp_path))])
    relay.start()
    try:
        rss_before, started = rss_kib(), time.monotonic()
        relay.follow({str(tree)})
        setup_s = time.monotonic() - started
        rss_mib = (rss_kib() - rss_before) / 1024
        cpu_before = cpu_s()
        time.sleep(2.0)
        idle = (cpu_s() - cpu_before) / 2.0
        print(f"100k-file tree: set-up {setup_s:.2f} s, +{rss_mib:.1f} MiB RSS, idle CPU {idle:.1%}")
        assert setup_s < TREE_SETUP_LIMIT_S
        assert rss_mib < TREE_RSS_LIMIT_MIB
        assert idle < IDLE_CPU_LIMIT
        deep = tree / "d9" / "e999" / "f99.js"
        deep.write_text("changed")
        wait_until(lambda: f"M {deep}" in guest.lines())
    finally:
        relay.close()
