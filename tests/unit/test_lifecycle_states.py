"""Lifecycle state machine: legal sequences, illegal moves, listeners, thread safety."""

from __future__ import annotations

import threading

import pytest

from hypervisor.agent.lifecycle import ALLOWED, Lifecycle, State
from hypervisor.errors import StateError

S = State


def recorded(lc: Lifecycle) -> list[State]:
    """The states `lc` goes through from now on, starting with its current one."""
    seen = [lc.state]
    lc.subscribe(lambda _old, new, _reason: seen.append(new))
    return seen


def run(lc: Lifecycle, *states: State) -> list[State]:
    seen = recorded(lc)
    for state in states:
        lc.transition(state)
    return seen


def test_values_are_lowercase_strings() -> None:
    assert [s.value for s in State] == ["stopped", "starting", "running", "stopping", "error", "paused"]


def test_start() -> None:
    lc = Lifecycle()
    assert run(lc, S.STARTING, S.RUNNING) == [S.STOPPED, S.STARTING, S.RUNNING]
    assert lc.state is S.RUNNING


def test_stop() -> None:
    lc = Lifecycle(S.RUNNING)
    assert run(lc, S.STOPPING, S.STOPPED) == [S.RUNNING, S.STOPPING, S.STOPPED]


def test_restart() -> None:
    lc = Lifecycle()
    moves = (S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.STARTING, S.RUNNING)
    assert run(lc, *moves) == [S.STOPPED, *moves]


def test_crash_then_recover() -> None:
    lc = Lifecycle()
    seen = run(lc, S.STARTING, S.RUNNING)
    lc.transition(S.ERROR, "QEMU exited with status 1")
    assert lc.state is S.ERROR and lc.reason == "QEMU exited with status 1"
    run(lc, S.STARTING, S.RUNNING)
    assert seen == [S.STOPPED, S.STARTING, S.RUNNING, S.ERROR, S.STARTING, S.RUNNING]


def test_guest_poweroff_goes_straight_to_stopped() -> None:
    lc = Lifecycle(S.RUNNING)
    assert run(lc, S.STOPPED) == [S.RUNNING, S.STOPPED]


def test_a_vm_left_running_after_an_error_can_be_stopped() -> None:
    # a failed re-adoption leaves a healthy QEMU running; `pinnace stop` must still stop it
    assert run(Lifecycle(S.ERROR), S.STOPPING, S.STOPPED) == [S.ERROR, S.STOPPING, S.STOPPED]


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
    seen = recorded(lc)
    with pytest.raises(StateError) as err:
        lc.transition(new)
    assert str(err.value) == f"cannot go from {old.value} to {new.value}"
    assert lc.state is old and seen == [old]


def test_pause_and_resume() -> None:
    lc = Lifecycle(S.RUNNING)
    assert run(lc, S.PAUSED, S.RUNNING, S.PAUSED, S.STOPPING) == [S.RUNNING, S.PAUSED, S.RUNNING, S.PAUSED,
                                                                 S.STOPPING]
    with pytest.raises(StateError):
        Lifecycle(S.STARTING).transition(S.PAUSED)  # a boot is not paused: it waits or fails


def test_exact_allowed_table() -> None:
    assert ALLOWED == {
        S.STOPPED: {S.STARTING},
        S.STARTING: {S.RUNNING, S.STOPPING, S.ERROR, S.STOPPED},
        S.RUNNING: {S.STOPPING, S.ERROR, S.STOPPED, S.PAUSED},
        S.PAUSED: {S.RUNNING, S.STOPPING, S.ERROR, S.STOPPED},
        S.STOPPING: {S.STOPPED, S.ERROR},
        S.ERROR: {S.STARTING, S.STOPPING, S.STOPPED},
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


def test_concurrent_starts_only_one_wins() -> None:
    for _ in range(50):
        lc = Lifecycle()
        seen = recorded(lc)
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
        assert seen == [S.STOPPED, S.STARTING]
