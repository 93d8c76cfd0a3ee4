"""Notifications only for changes the user did not ask for; the Quit preference."""

from __future__ import annotations

from pathlib import Path

from app.tray.notices import notice_for, settled
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


def test_settled() -> None:
    assert settled("stop", st("stopped")) and not settled("stop", st("stopping"))
    assert settled("restart", running_status()) and not settled("restart", st("stopped"))
    assert settled("start", st("error")) and settled(None, None)


def test_quit_plan() -> None:
    assert quit_plan("ask", "running") == "ask"
    assert quit_plan("keep", "running") == "keep"
    assert quit_plan("stop", "starting") == "stop"
    assert quit_plan("stop", "stopped") == "keep"  # nothing to stop, nothing to ask
    assert quit_plan("bogus", "running") == "ask"


def test_prefs_round_trip(tmp_path: Path) -> None:
    assert TrayPrefs.load(tmp_path).quit_action == "ask"
    TrayPrefs("keep").save(tmp_path / "cfg")
    assert TrayPrefs.load(tmp_path / "cfg").quit_action == "keep"
    (tmp_path / "cfg" / "tray.json").write_text("{broken")
    assert TrayPrefs.load(tmp_path / "cfg").quit_action == "ask"
