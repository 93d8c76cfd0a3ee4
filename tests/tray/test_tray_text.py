"""Status line, tooltip and menu model: what the tray shows for each state."""

from __future__ import annotations

import pytest

from app.tray.menu_model import Action, build_menu, icon_state, lifecycle_actions
from app.tray.status_text import (
    clock_text,
    context_command,
    docker_host,
    memory_text,
    short_version,
    size_text,
    status_line,
    tooltip,
)
from hypervisor.control import Status
from tests.tray.helpers import running_status


def test_status_line_running_matches_the_issue_example() -> None:
    assert status_line(running_status()) == "Running · KVM · Docker 26.1 · 2 CPUs, 4 GiB"


def test_status_line_other_states() -> None:
    assert status_line(None) == "Stopped"
    assert status_line(Status("default", state="stopped")) == "Stopped"
    assert status_line(Status("default", state="stopping")) == "Stopping…"
    assert status_line(Status("default", state="starting", stage="waiting for docker")) == (
        "Starting… waiting for docker"
    )
    assert status_line(Status("default", state="error", reason="qemu exited: boom\nmore")) == (
        "Error: qemu exited: boom"
    )
    assert status_line(running_status(cpus=1, memory_mib=1536, accel="tcg", engine_version="")) == (
        "Running · TCG · 1 CPU, 1.5 GiB"
    )


def test_units() -> None:
    assert memory_text(512) == "512 MiB"
    assert memory_text(2048) == "2 GiB"
    assert short_version("26.1.3") == "26.1"
    assert short_version("27") == "27"
    assert size_text(0) == "0 B"
    assert size_text(1536 * 1024 * 1024) == "1.5 GiB"


def test_tooltip_has_state_accelerator_and_engine() -> None:
    text = tooltip(running_status())
    assert text.splitlines() == ["Pinnace: Running", "Accelerator: KVM", "Docker 26.1.3"]
    assert tooltip(None, "dev") == "Pinnace (dev): Stopped"


def test_tooltip_shows_the_guest_clock_while_running() -> None:
    lines = tooltip(running_status(clock_offset_s=0.012)).splitlines()
    assert lines == ["Pinnace: Running", "Accelerator: KVM", "Docker 26.1.3", "Clock: guest +0.012 s from host"]
    warning = "the guest clock could not be set (the VM resumed): ssh: connection timed out\ndetails"
    lines = tooltip(running_status(clock_offset_s=-41.5, clock_warning=warning)).splitlines()
    assert lines[-2:] == [
        "Clock: guest -41.500 s from host",
        "⚠ the guest clock could not be set (the VM resumed): ssh: connection timed out",
    ]
    assert tooltip(running_status(clock_warning=warning)).splitlines()[-1].startswith("⚠ the guest clock")
    assert "Clock" not in tooltip(running_status())  # not measured yet
    # not while it is not running: a paused clock stands still, a stopped one's facts are old
    paused = running_status(state="paused", reason="paused", clock_offset_s=0.01, clock_warning=warning)
    assert tooltip(paused).splitlines() == ["Pinnace: Paused", "Accelerator: KVM", "Docker 26.1.3", "paused"]
    assert tooltip(Status("default", clock_offset_s=0.01, clock_warning=warning)) == "Pinnace: Stopped"
    assert status_line(running_status(clock_offset_s=3.0)) == "Running · KVM · Docker 26.1 · 2 CPUs, 4 GiB"


def test_clock_text() -> None:
    assert clock_text(0.0123) == "guest +0.012 s from host"
    assert clock_text(-0.0004) == "guest +0.000 s from host"  # no "-0.000"
    assert clock_text(-2.5) == "guest -2.500 s from host"


def test_docker_connection_hints() -> None:
    assert context_command("default") == "docker context use pinnace"
    assert context_command("dev") == "docker context use pinnace-dev"
    assert docker_host("/run/x/docker.sock") == "unix:///run/x/docker.sock"
    assert docker_host(r"\\.\pipe\pinnace-default", "windows") == "npipe:////./pipe/pinnace-default"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("stopped", [Action.START]),
        ("starting", [Action.STOP]),
        ("running", [Action.STOP, Action.RESTART]),
        ("stopping", []),
        ("error", [Action.START, Action.STOP]),
        ("paused", [Action.START, Action.STOP, Action.RESTART]),
    ],
)
def test_lifecycle_actions_per_state(state: str, expected: list[Action]) -> None:
    status = Status("default", state=state)
    assert list(lifecycle_actions(status)) == expected
    actions = [e.action for e in build_menu(status) if e.action is not None]
    for action in (Action.START, Action.STOP, Action.RESTART):
        assert (action in actions) == (action in expected)


def test_menu_layout_when_running() -> None:
    entries = build_menu(running_status())
    assert entries[0].text.startswith("Running") and not entries[0].enabled and entries[0].action is None
    actions = [e.action for e in entries if e.action is not None]
    assert actions == [
        Action.STOP,
        Action.RESTART,
        Action.RESET,
        Action.SETTINGS,
        Action.DASHBOARD,
        Action.COPY_CONTEXT,
        Action.COPY_DOCKER_HOST,
        Action.OPEN_LOGS,
        Action.TROUBLESHOOT,
        Action.QUIT,
    ]
    texts = {e.action: e.text for e in entries}
    assert texts[Action.COPY_CONTEXT] == "Copy `docker context use pinnace`"
    assert texts[Action.RESET] == "Reset VM…"


@pytest.mark.parametrize("state", ["stopped", "starting", "running", "stopping", "error", "paused", "unknown"])
@pytest.mark.parametrize("busy", [False, True])
def test_troubleshoot_is_offered_in_every_state(state: str, busy: bool) -> None:
    for status in (None, Status("default", state=state)):
        entries = {e.action: e for e in build_menu(status, busy=busy) if e.action is not None}
        assert entries[Action.TROUBLESHOOT].enabled and entries[Action.TROUBLESHOOT].text == "Troubleshoot…"


def test_no_agent_means_start_and_busy_hides_lifecycle() -> None:
    assert [e.action for e in build_menu(None)][2] == Action.START
    busy = build_menu(running_status(), busy=True)
    actions = {e.action: e for e in busy if e.action}
    assert Action.STOP not in actions and Action.START not in actions
    assert not actions[Action.RESET].enabled


def test_icon_state() -> None:
    assert icon_state(None) == "stopped"
    assert icon_state(Status("d", state="stopping")) == "starting"
    assert icon_state(Status("d", state="error")) == "error"
    assert icon_state(running_status()) == "running"
    assert icon_state(Status("d", state="paused")) == "paused"
    assert icon_state(Status("d", state="hibernating")) == "stopped"  # unknown to this tray


DISK_FULL = (
    "the disk holding /home/u/.local/share/pinnace/instances/default/data.qcow2 is full (12 MiB free): "
    "the VM resumes by itself when space is freed"
)


def test_paused_shows_its_reason_like_an_error() -> None:
    assert status_line(Status("default", state="paused", reason="paused (QEMU stopped the VM)")) == (
        "Paused: paused (QEMU stopped the VM)"
    )
    line = status_line(running_status(state="paused", reason=DISK_FULL))
    assert line.startswith("Paused: the disk holding /home/u/") and line.endswith("…")
    assert status_line(Status("default", state="paused")) == "Paused"
    assert tooltip(Status("default", state="paused", reason="paused (QEMU stopped the VM)")).splitlines() == [
        "Pinnace: Paused",
        "paused (QEMU stopped the VM)",
    ]


def test_paused_menu_offers_resume_and_reset() -> None:
    entries = build_menu(running_status(state="paused", reason=DISK_FULL))
    by_action = {e.action: e for e in entries if e.action is not None}
    assert by_action[Action.START].text == "Resume"
    assert by_action[Action.STOP].text == "Stop" and by_action[Action.RESTART].text == "Restart"
    assert by_action[Action.RESET].enabled
    assert [e.action for e in entries][2:5] == [Action.START, Action.STOP, Action.RESTART]
    assert {e.action: e.text for e in build_menu(None)}[Action.START] == "Start"  # only paused says Resume
    assert not {e.action: e for e in build_menu(Status("d", state="stopping"))}[Action.RESET].enabled
