"""The tray against a real agent and engine (the shared `vm_instance`); skipped without it."""

from __future__ import annotations

import uuid

import pytest

from app.tray.controller import InstanceController
from app.tray.dashboard import Dashboard
from app.tray.menu_model import Action
from app.tray.prefs import TrayPrefs
from app.tray.tray import TrayApp
from hypervisor.control import ControlClient

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]


def busybox_tag(client) -> str:  # noqa: ANN001 - docker SDK client
    try:
        from tests.imagekit import busybox_image
    except ImportError:
        pytest.skip("tests.imagekit.busybox_image is not available")
    try:
        return busybox_image(client)
    except FileNotFoundError as exc:
        pytest.skip(f"no offline busybox image: {exc}")


@pytest.fixture
def tray(qtbot, tray_vm):  # noqa: ANN001, ANN201
    quits: list[str] = []
    controller = InstanceController(tray_vm.paths)
    app = TrayApp(tray_vm.paths, controller, app_quit=lambda: quits.append("quit"))
    app.quits = quits  # type: ignore[attr-defined]
    controller.start_watching()
    qtbot.waitUntil(lambda: controller.state == "running", timeout=60_000)
    yield app
    controller.shutdown()


def test_menu_shows_running(tray: TrayApp) -> None:
    tray.menu.aboutToShow.emit()
    assert tray.status_action.text().startswith("Running · ")
    assert "Docker " in tray.status_action.text()
    assert Action.STOP in tray.visible_actions() and Action.START not in tray.visible_actions()


def test_dashboard_lists_a_container_from_engine_events(qtbot, tray_vm) -> None:  # noqa: ANN001
    import docker

    client = docker.DockerClient(base_url=f"unix://{tray_vm.docker_socket}", timeout=120)
    tag = busybox_tag(client)
    name = f"tray-test-{uuid.uuid4().hex[:8]}"
    dashboard = Dashboard(str(tray_vm.docker_socket))
    qtbot.addWidget(dashboard)
    try:
        with qtbot.waitSignal(dashboard.refreshed, timeout=30_000):
            dashboard.open()
        assert name not in dashboard.container_names()
        # Created after the window opened: it must arrive through the events stream.
        client.containers.run(tag, ["sleep", "300"], name=name, detach=True)
        qtbot.waitUntil(lambda: name in dashboard.container_names(), timeout=30_000)
        row = next(r for r in dashboard.snapshot.containers if r.name == name)
        assert row.running and row.image.startswith(tag.split(":")[0])
    finally:
        dashboard.disconnect_engine()
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        client.close()


def test_quit_without_stopping_leaves_the_vm_running(qtbot, tray: TrayApp, tray_vm) -> None:  # noqa: ANN001
    tray.prefs = TrayPrefs(quit_action="keep")
    tray.actions[Action.QUIT].trigger()
    assert tray.quits == ["quit"]  # type: ignore[attr-defined]
    qtbot.wait(1000)
    assert ControlClient(tray_vm.paths.control_socket).status().state == "running"
