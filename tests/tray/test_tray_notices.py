"""Notifications only for changes the user did not ask for; the Quit preference."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from app.tray import notices
from app.tray.notices import CLOCK_TITLE, clock_notice, notice_for, settled, start_failed
from app.tray.prefs import TrayPrefs, quit_plan
from hypervisor.control import Status
from tests.tray.helpers import running_status


def st(state: str, reason: str = "") -> Status:
    return Status("default", state=state, reason=reason)


def test_unexpected_stop_notifies_with_reason() -> None:
    note = notice_for(running_status(), st("stopped", "guest kernel panic"), expected=None)
    assert note is not None and note.title == "Docker engine stopped unexpectedly"
    assert note.message == "guest kernel panic"
    assert notice_for(running_status(), None, expected=None) is not None  # agent vanished


def test_requested_changes_are_quiet() -> None:
    assert notice_for(running_status(), st("stopping"), expected="stop") is None
    assert notice_for(running_status(), st("stopped"), expected="restart") is None
    assert notice_for(st("stopped"), st("starting"), expected="start") is None
    assert notice_for(st("starting"), running_status(), expected=None) is None


def test_start_failure_always_notifies() -> None:
    note = notice_for(st("starting"), st("error", "hvf: probe failed\ndetails"), expected="start")
    assert note is not None and note.title == "Pinnace could not start"
    assert note.message == "hvf: probe failed" and note.critical
    assert notice_for(st("starting"), st("stopped"), expected=None) is not None


DISK_FULL = (
    "the disk holding /home/u/.local/share/pinnace/instances/default/data.qcow2 is full (12 MiB free): "
    "the VM resumes by itself when space is freed"
)
CRASH = "QEMU exited unexpectedly (killed by signal 9)"


def test_paused_warns_with_the_whole_reason() -> None:
    note = notice_for(running_status(), st("paused", DISK_FULL), expected=None)
    assert note is not None and note.title == "Pinnace VM paused"
    assert note.message == DISK_FULL and note.warning and not note.critical
    assert notice_for(running_status(), st("paused"), expected="restart") is not None  # never asked for
    assert notice_for(st("paused", DISK_FULL), st("paused", "paused (QEMU stopped the VM)"), None) is None


def test_resumed_by_itself_notifies_but_a_requested_resume_is_quiet() -> None:
    note = notice_for(st("paused", DISK_FULL), running_status(reason="resumed"), expected=None)
    assert note is not None and note.title == "Pinnace VM resumed" and "The VM resumed" in note.message
    assert not note.critical and not note.warning
    assert notice_for(st("paused", DISK_FULL), running_status(reason="resumed"), expected="start") is None
    assert notice_for(st("paused", DISK_FULL), st("stopping"), expected="stop") is None
    stopped = notice_for(st("paused", DISK_FULL), st("stopped", "QEMU exited"), expected=None)
    assert stopped is not None and stopped.title == "Docker engine stopped unexpectedly"


def test_crash_restart_notifies_once_per_crash_and_once_when_back() -> None:
    """running -> error (restarting in) -> starting -> running, as the agent reports it."""
    steps = [
        running_status(reason="engine ready"),
        st("error", f"{CRASH}; restarting in 2 s (1 of 3)"),
        st("error", f"{CRASH}; restarting in 1 s (1 of 3)"),  # same state again: no second notice
        st("starting", "restarting after a crash (1 of 3)"),
        Status("default", state="starting", reason="restarting after a crash (1 of 3)", stage="booting kernel"),
        running_status(reason="engine ready"),
    ]
    notes = [notice_for(prev, new, expected=None) for prev, new in pairwise(steps)]
    crashed, again, booting, stage, back = notes
    assert crashed is not None and crashed.title == "Pinnace is restarting the VM after a crash"
    assert crashed.message == f"{CRASH}; restarting in 2 s (1 of 3)" and crashed.warning
    assert again is None and booting is None and stage is None
    assert back is not None and back.message == "The VM was restarted after a crash"
    assert notice_for(st("starting"), running_status(), expected=None) is None  # an ordinary boot


def test_crash_during_the_users_start_is_a_restart_not_a_failed_start() -> None:
    note = notice_for(st("starting"), st("error", f"{CRASH}; restarting in 2 s (1 of 3)"), expected="start")
    assert note is not None and note.title == "Pinnace is restarting the VM after a crash"
    rebooting = st("starting", "restarting after a crash (2 of 3)")
    note = notice_for(rebooting, st("error", f"{CRASH}; restarting in 2 s (3 of 3)"), expected=None)
    assert note is not None and note.title == "Pinnace is restarting the VM after a crash"


def test_giving_up_is_an_error_with_the_whole_reason() -> None:
    gave_up = f"{CRASH}; not restarted again: it crashed 3 times in 5 minutes"
    for prev in (running_status(), st("starting", "restarting after a crash (2 of 3)")):
        note = notice_for(prev, st("error", gave_up), expected=None)
        assert note is not None and note.critical and note.title == "Pinnace VM crashed"
        assert note.message == gave_up  # not cut at the menu's 80 characters
    # error -> error: the countdown ended without a boot; that is news, a repeat is not
    note = notice_for(st("error", f"{CRASH}; restarting in 2 s (3 of 3)"), st("error", gave_up), expected=None)
    assert note is not None and note.title == "Pinnace VM crashed"
    assert notice_for(st("error", gave_up), st("error", gave_up + "."), expected=None) is None
    failed = notice_for(st("starting", "restarting after a crash (1 of 3)"), st("error", "no engine"), None)
    assert failed is not None and failed.critical and failed.title == "Pinnace could not restart the VM after a crash"


def test_start_failure_on_a_paused_vm_says_resume() -> None:
    assert start_failed("agent timed out").title == "Pinnace could not start"
    assert start_failed("agent timed out", resuming=True).title == "Pinnace could not resume the VM"


RESUMED_UNSET = "the guest clock could not be set (the VM resumed): ssh: connection timed out"
PERIODIC_UNSET = "the guest clock could not be set (periodic check): ssh: connection timed out"


def clock_messages(statuses: list[Status | None]) -> list[str]:
    """The clock notices for a run of statuses, remembering the told warning like the controller."""
    warned, messages = "", []
    for status in statuses:
        note, warned = clock_notice(warned, status)
        if note is not None:
            assert note.title == CLOCK_TITLE and note.warning and not note.critical
            messages.append(note.message)
    return messages


def test_clock_warning_notifies_once_per_distinct_text() -> None:
    fine = running_status(clock_offset_s=0.004)
    unset = running_status(clock_offset_s=0.004, clock_warning=RESUMED_UNSET)
    note, warned = clock_notice("", unset)
    assert note is not None and note.message == RESUMED_UNSET and warned == RESUMED_UNSET
    again = running_status(clock_warning=RESUMED_UNSET, reason="x")
    assert clock_notice(RESUMED_UNSET, again) == (None, RESUMED_UNSET)  # the same warning: already told
    assert clock_notice(RESUMED_UNSET, fine) == (None, "")  # cleared: quiet, and forgotten
    run = [fine, unset, unset, running_status(clock_warning=PERIODIC_UNSET), fine, unset]
    assert clock_messages(run) == [RESUMED_UNSET, PERIODIC_UNSET, RESUMED_UNSET]  # the old text once corrected
    assert clock_messages([fine, running_status(clock_offset_s=0.002), fine]) == []


def test_clock_warning_counts_only_while_running() -> None:
    stale = Status("default", state="stopped", clock_warning=RESUMED_UNSET)  # state.json's last words
    assert clock_notice("", stale) == (None, "")
    assert clock_notice("", None) == (None, "")
    paused = running_status(state="paused", reason="disk full", clock_warning=PERIODIC_UNSET)
    assert clock_notice(RESUMED_UNSET, paused) == (None, RESUMED_UNSET)  # the pause is the news
    # a restart keeps the last warning until its first sync: not told twice
    unset = running_status(clock_warning=RESUMED_UNSET)
    restart = [unset, st("stopping"), st("stopped"), st("starting"), None, unset]
    assert clock_messages(restart) == [RESUMED_UNSET]
    long = running_status(clock_warning="the guest clock could not be set (after boot): " + "x" * 300 + "\nmore")
    note, warned = clock_notice("", long)
    assert note is not None and len(note.message) == 200 and note.message.endswith("…") and warned.endswith("more")


def test_settled() -> None:
    assert settled("stop", st("stopped")) and not settled("stop", st("stopping"))
    assert settled("restart", running_status()) and not settled("restart", st("stopped"))
    assert settled("start", st("error")) and settled(None, None)


def test_quit_plan() -> None:
    assert quit_plan("ask", "running") == "ask"
    assert quit_plan("keep", "running") == "keep"
    assert quit_plan("stop", "starting") == "stop"
    assert quit_plan("stop", "stopped") == "keep"  # nothing to stop, nothing to ask
    assert quit_plan("ask", "paused") == "ask"  # a paused VM is still up
    assert quit_plan("bogus", "running") == "ask"


def test_prefs_round_trip(tmp_path: Path) -> None:
    assert TrayPrefs.load(tmp_path).quit_action == "ask"
    TrayPrefs("keep").save(tmp_path / "cfg")
    assert TrayPrefs.load(tmp_path / "cfg").quit_action == "keep"
    (tmp_path / "cfg" / "tray.json").write_text("{broken")
    assert TrayPrefs.load(tmp_path / "cfg").quit_action == "ask"


def test_image_notices_are_shown_once_per_id() -> None:
    updated = Status("default", state="running", image_notice="guest image updated to 2.0 (ab) (was 1.0 (cd))",
                     image_notice_id=3)
    note, told = notices.image_notice(2, updated)
    assert note is not None and note.title == notices.IMAGE_UPDATED_TITLE and told == 3 and not note.warning
    assert notices.image_notice(told, updated) == (None, 3)
    rolled = Status("default", state="running", image_notice_id=4,
                    image_notice="rolled back to 1.0 (cd): image 2.0 (ab) failed: the guest powered off by itself")
    note, told = notices.image_notice(told, rolled)
    assert note is not None and note.title == notices.IMAGE_ROLLED_BACK_TITLE and note.warning and told == 4
    assert "powered off" in note.message
    assert notices.image_notice(4, None) == (None, 4)


def test_the_told_image_notice_is_kept_in_the_tray_prefs(tmp_path) -> None:  # noqa: ANN001
    from app.tray.prefs import TrayPrefs

    prefs = TrayPrefs.load(tmp_path)
    assert prefs.image_notice_told == 0
    prefs.image_notice_told = 7
    prefs.save(tmp_path)
    assert TrayPrefs.load(tmp_path).image_notice_told == 7
    (tmp_path / "tray.json").write_text('{"image_notice_told": "x"}')
    assert TrayPrefs.load(tmp_path).image_notice_told == 0
