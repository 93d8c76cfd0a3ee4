"""Status line, tooltip and menu model: what the tray shows for each state."""

from __future__ import annotations

import pytest

from app.tray.menu_model import Action, build_menu, icon_state, lifecycle_actions
from app.tray.status_text import (
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
        Action.QUIT,
    ]
    texts = {e.action: e.text for e in entries}
    assert texts[Action.COPY_CONTEXT] == "Copy `docker context use pinnace`"
    assert texts[Action.RESET] == "Reset VM…"


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
