"""The tray widget layer with a fake agent: menu follows the state, Quit honours the preference,
a second start reaches the first."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from app.tray.controller import InstanceController
from app.tray.menu_model import Action
from app.tray.prefs import TrayPrefs
from app.tray.single_instance import SingleInstance, send, server_name
from app.tray.tray import TrayApp
from hypervisor.control import Status
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts
from tests.tray.fakes import SlowClient
from tests.tray.helpers import running_status


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths.for_instance("default", {"PINNACE_HOME": str(tmp_path)})
    p.ensure_dirs()
    return p


def make_tray(paths: Paths, client: SlowClient) -> tuple[TrayApp, InstanceController, list[str]]:
    quits: list[str] = []
    controller = InstanceController(paths, client_factory=lambda: client, watch=False)
    tray = TrayApp(
        paths,
        controller,
        host_os="linux",
        host_facts=HostFacts(cpus=4, memory_mib=8192, os="linux"),
        app_quit=lambda: quits.append("quit"),
    )
    return tray, controller, quits


def test_menu_follows_status(qtbot, paths: Paths) -> None:  # noqa: ANN001
    tray, controller, _ = make_tray(paths, SlowClient(running_status(), delay=0))
    assert tray.visible_actions()[0] == Action.START
    assert tray.status_action.text() == "Stopped"
    controller._on_status(running_status())
    tray.menu.aboutToShow.emit()
    assert tray.status_action.text() == "Running · KVM · Docker 26.1 · 2 CPUs, 4 GiB"
    assert tray.visible_actions()[:3] == [Action.STOP, Action.RESTART, Action.RESET]
    assert "Docker 26.1.3" in tray.icon.toolTip()
    controller._on_status(Status("default", state="starting", stage="booting"))
    assert tray._anim.isActive()  # starting animates
    controller._on_status(running_status())
    assert not tray._anim.isActive()


def test_copy_actions(qtbot, paths: Paths) -> None:  # noqa: ANN001
    tray, controller, _ = make_tray(paths, SlowClient(running_status(), delay=0))
    controller._on_status(running_status())
    tray.rebuild_menu()
    tray.actions[Action.COPY_CONTEXT].trigger()
    assert QApplication.clipboard().text() == "docker context use pinnace"
    tray.actions[Action.COPY_DOCKER_HOST].trigger()
    assert QApplication.clipboard().text() == "unix:///run/user/1000/pinnace/default/docker.sock"


def test_quit_keeping_the_vm_does_not_stop_it(qtbot, paths: Paths) -> None:  # noqa: ANN001
    client = SlowClient(running_status(), delay=0)
    TrayPrefs("keep").save(paths.config_dir)
    tray, controller, quits = make_tray(paths, client)
    controller._on_status(running_status())
    tray.rebuild_menu()
    tray.actions[Action.QUIT].trigger()
    assert quits == ["quit"]
    assert client.calls == []


def test_quit_stopping_the_vm_waits_for_stop(qtbot, paths: Paths) -> None:  # noqa: ANN001
    client = SlowClient(running_status(), delay=0.3)
    TrayPrefs("stop").save(paths.config_dir)
    tray, controller, quits = make_tray(paths, client)
    controller._on_status(running_status())
    tray.quit()
    assert quits == []  # not before the stop finished
    qtbot.waitUntil(lambda: quits == ["quit"], timeout=5000)
    assert [c[0] for c in client.calls] == ["stop"]


def test_quit_dialog_remembers_answer(qtbot, paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from app.tray import quit_dialog

    def fake_exec(self: quit_dialog.QuitDialog) -> int:
        self.remember_box.setChecked(True)
        self.keep_button.click()
        return 0

    monkeypatch.setattr(quit_dialog.QuitDialog, "exec", fake_exec)
    tray, controller, quits = make_tray(paths, SlowClient(running_status(), delay=0))
    controller._on_status(running_status())
    tray.quit()
    assert quits == ["quit"]
    assert TrayPrefs.load(paths.config_dir).quit_action == "keep"


def test_unexpected_stop_shows_notice(qtbot, paths: Paths) -> None:  # noqa: ANN001
    tray, controller, _ = make_tray(paths, SlowClient(running_status(), delay=0))
    controller._on_status(running_status())
    controller._on_status(Status("default", state="stopped", reason="guest powered off"))
    assert tray.last_notice is not None
    assert tray.last_notice.title == "Docker engine stopped unexpectedly"


def test_settings_saved_through_shared_validator(qtbot, paths: Paths) -> None:  # noqa: ANN001
    from hypervisor import settings as settings_mod

    tray, _controller, _ = make_tray(paths, SlowClient(running_status(), delay=0))
    dialog = tray.open_settings()
    assert dialog is not None
    qtbot.addWidget(dialog)
    dialog.cpus.setValue(3)
    dialog.save_button.click()
    saved = settings_mod.load(paths.settings_file, HostFacts(cpus=4, memory_mib=8192, os="linux"))
    assert saved.cpus == 3


def test_reset_dialog_without_engine(qtbot, paths: Paths) -> None:  # noqa: ANN001
    tray, _controller, _ = make_tray(paths, SlowClient(running_status(), delay=0))
    dialog = tray.open_reset()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: "counts unavailable" in dialog.summary_label.text(), timeout=5000)
    assert "settings" in dialog.summary_label.text()


def test_second_start_reaches_the_first(qtbot, paths: Paths) -> None:  # noqa: ANN001
    name = server_name(paths, "linux")
    first = SingleInstance(name)
    assert first.claim()
    second = SingleInstance(name)
    assert not second.claim()
    with qtbot.waitSignal(first.activated, timeout=5000) as got:
        assert send(name, "dashboard")
    assert got.args == ["dashboard"]
    first.close()
    third = SingleInstance(name)  # the socket file is reclaimed once its owner is gone
    assert third.claim()
    third.close()


DISK_FULL = "the disk holding /home/u/data.qcow2 is full (12 MiB free): the VM resumes by itself when space is freed"
CRASH = "QEMU exited unexpectedly (killed by signal 9)"


def test_paused_vm_menu_icon_and_resume(qtbot, paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from app.tray import icons
    from hypervisor import operations

    drawn: list[str] = []
    real_icon = icons.state_icon

    def recording_icon(state: str, *args: object, **kwargs: object) -> object:
        drawn.append(state)
        return real_icon(state, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(icons, "state_icon", recording_icon)
    started: list[str] = []
    monkeypatch.setattr(operations, "start", lambda p, **_k: started.append(p.instance))
    tray, controller, _ = make_tray(paths, SlowClient(running_status(), delay=0))
    controller._on_status(running_status())
    controller._on_status(running_status(state="paused", reason=DISK_FULL))
    assert drawn[-1] == "paused" and not tray._anim.isActive()
    assert tray.icon.toolTip().splitlines()[0] == "Pinnace: Paused"
    assert tray.last_notice is not None and tray.last_notice.title == "Pinnace VM paused"
    tray.menu.aboutToShow.emit()
    assert tray.status_action.text().startswith("Paused: the disk holding")
    assert tray.actions[Action.START].text() == "Resume" and tray.actions[Action.RESET].isEnabled()
    with qtbot.waitSignal(controller.operation_done, timeout=5000):
        tray.actions[Action.START].trigger()
    assert started == ["default"]  # Resume is hypervisor.operations.start, as the contract says


def test_crash_restart_notices_through_the_controller(qtbot, paths: Paths) -> None:  # noqa: ANN001
    tray, controller, _ = make_tray(paths, SlowClient(running_status(), delay=0))
    notes: list[str] = []
    controller.notice.connect(lambda n: notes.append(n.title))
    restarting = Status("default", state="error", reason=f"{CRASH}; restarting in 2 s (1 of 3)")
    rebooting = Status("default", state="starting", reason="restarting after a crash (1 of 3)")
    for status in (running_status(), restarting, restarting, rebooting, running_status(), running_status()):
        controller._on_status(status)
    gave_up = f"{CRASH}; not restarted again: it crashed 3 times in 5 minutes"
    controller._on_status(Status("default", state="error", reason=gave_up))
    assert notes == [
        "Pinnace is restarting the VM after a crash",
        "Pinnace VM restarted",
        "Pinnace VM crashed",
    ]
    assert tray.last_notice is not None and tray.last_notice.message == gave_up


def test_clock_warning_notices_through_the_controller(qtbot, paths: Paths) -> None:  # noqa: ANN001
    tray, controller, _ = make_tray(paths, SlowClient(running_status(), delay=0))
    notes: list[str] = []
    controller.notice.connect(lambda n: notes.append(n.message))
    unset = "the guest clock could not be set (host sleep of +3600 s): ssh: connection refused"
    for status in (
        running_status(clock_offset_s=0.003),
        running_status(clock_offset_s=0.003, clock_warning=unset),
        running_status(clock_offset_s=0.003, clock_warning=unset, stage="ready"),  # same warning: once
        running_status(clock_offset_s=0.002),  # corrected: quiet
    ):
        controller._on_status(status)
    assert notes == [unset]
    assert tray.last_notice is not None and tray.last_notice.warning and not tray.last_notice.critical
    assert tray.icon.toolTip().splitlines()[-1] == "Clock: guest +0.002 s from host"
