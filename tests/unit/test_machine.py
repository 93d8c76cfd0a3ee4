"""Lifecycle state machine: legal sequences, illegal moves, listeners, thread safety."""

from __future__ import annotations

import threading

import pytest

from hypervisor.errors import StateError
from hypervisor.machine import ALLOWED, Lifecycle, State

S = State


def run(lc: Lifecycle, *states: State) -> None:
    for state in states:
        lc.transition(state)


def test_values_are_lowercase_strings() -> None:
    assert [s.value for s in State] == ["stopped", "starting", "running", "stopping", "error"]


def test_start() -> None:
    lc = Lifecycle()
    run(lc, S.STARTING, S.RUNNING)
    assert lc.history == [S.STOPPED, S.STARTING, S.RUNNING]
    assert lc.state is S.RUNNING


def test_stop() -> None:
    lc = Lifecycle(S.RUNNING)
    run(lc, S.STOPPING, S.STOPPED)
    assert lc.history == [S.RUNNING, S.STOPPING, S.STOPPED]


def test_restart() -> None:
    lc = Lifecycle()
    run(lc, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.STARTING, S.RUNNING)
    assert lc.history == [S.STOPPED, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.STARTING, S.RUNNING]


def test_crash_then_recover() -> None:
    lc = Lifecycle()
    run(lc, S.STARTING, S.RUNNING)
    lc.transition(S.ERROR, "QEMU exited with status 1")
    assert lc.state is S.ERROR and lc.reason == "QEMU exited with status 1"
    run(lc, S.STARTING, S.RUNNING)
    assert lc.history == [S.STOPPED, S.STARTING, S.RUNNING, S.ERROR, S.STARTING, S.RUNNING]


def test_guest_poweroff_goes_straight_to_stopped() -> None:
    lc = Lifecycle(S.RUNNING)
    lc.transition(S.STOPPED, "guest powered off")
    assert lc.history == [S.RUNNING, S.STOPPED]


@pytest.mark.parametrize("initial", [S.STARTING, S.RUNNING, S.STOPPING, S.ERROR])
def test_reset_forces_stopped(initial: State) -> None:
    lc = Lifecycle(initial)
    lc.reset("QEMU gone")
    assert lc.history == [initial, S.STOPPED]
    assert lc.reason == "QEMU gone"


def test_reset_when_stopped_is_a_no_op() -> None:
    lc = Lifecycle()
    seen: list[tuple] = []
    lc.subscribe(lambda *a: seen.append(a))
    lc.reset()
    assert lc.history == [S.STOPPED] and seen == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.RUNNING, S.STARTING),
        (S.STOPPED, S.RUNNING),
        (S.STOPPED, S.STOPPING),
        (S.STOPPED, S.STOPPED),
        (S.STOPPING, S.RUNNING),
        (S.STOPPING, S.STARTING),
        (S.ERROR, S.RUNNING),
        (S.RUNNING, S.RUNNING),
    ],
)
def test_illegal_moves_raise_and_change_nothing(old: State, new: State) -> None:
    lc = Lifecycle(old)
    with pytest.raises(StateError) as err:
        lc.transition(new)
    assert str(err.value) == f"cannot go from {old.value} to {new.value}"
    assert lc.state is old and lc.history == [old]


def test_exact_allowed_table() -> None:
    assert ALLOWED == {
        S.STOPPED: {S.STARTING},
        S.STARTING: {S.RUNNING, S.STOPPING, S.ERROR, S.STOPPED},
        S.RUNNING: {S.STOPPING, S.ERROR, S.STOPPED},
        S.STOPPING: {S.STOPPED, S.ERROR},
        S.ERROR: {S.STARTING, S.STOPPED},
    }


def test_listeners_get_old_new_reason_after_the_change() -> None:
    lc = Lifecycle()
    seen: list[tuple] = []

    def listener(old: State, new: State, reason: str) -> None:
        seen.append((old, new, reason, lc.state))

    unsubscribe = lc.subscribe(listener)
    lc.transition(S.STARTING, "user")
    lc.transition(S.RUNNING)
    unsubscribe()
    lc.transition(S.STOPPING)
    assert seen == [(S.STOPPED, S.STARTING, "user", S.STARTING), (S.STARTING, S.RUNNING, "", S.RUNNING)]


def test_broken_listener_does_not_break_transition() -> None:
    lc = Lifecycle()
    calls: list[State] = []

    def bad(*_a: object) -> None:
        raise RuntimeError("boom")

    lc.subscribe(bad)
    lc.subscribe(lambda _o, n, _r: calls.append(n))
    lc.transition(S.STARTING)
    assert lc.state is S.STARTING and calls == [S.STARTING]


def test_since_uses_clock() -> None:
    now = [10.0]
    lc = Lifecycle(clock=lambda: now[0])
    assert lc.since == 10.0
    now[0] = 12.5
    lc.transition(S.STARTING)
    snap = lc.snapshot()
    assert (snap.state, snap.since) == (S.STARTING, 12.5)


def test_concurrent_starts_only_one_wins() -> None:
    for _ in range(50):
        lc = Lifecycle()
        wins: list[int] = []
        errors: list[int] = []
        barrier = threading.Barrier(8)

        def attempt(
            i: int, lc: Lifecycle = lc, wins: list = wins, errors: list = errors, barrier=barrier
        ) -> None:
            barrier.wait()
            try:
                lc.transition(S.STARTING)
                wins.append(i)
            except StateError:
                errors.append(i)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and len(errors) == 7
        assert lc.history == [S.STOPPED, S.STARTING]
