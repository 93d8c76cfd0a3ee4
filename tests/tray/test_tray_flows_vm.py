"""The tray's own Start and Reset VM… flows against a real agent on a separate instance."""

from __future__ import annotations

import pytest

from app.tray.controller import InstanceController
from app.tray.menu_model import Action, icon_state
from app.tray.tray import TrayApp

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]


@pytest.fixture
def fresh_tray(qtbot, monkeypatch, request):  # noqa: ANN001, ANN201
    try:
        instance = request.getfixturevalue("fresh_instance")
    except pytest.FixtureLookupError:
        pytest.skip("no fresh_instance fixture (tests/conftest.py) in this checkout")
    for key in ("PINNACE_HOME", "PINNACE_IMAGE_DIR", "DOCKER_CONFIG"):
        monkeypatch.setenv(key, instance.env[key])  # the agent the tray spawns inherits them
    controller = InstanceController(instance.paths)
    app = TrayApp(instance.paths, controller, app_quit=lambda: None)
    controller.start_watching()
    yield app, controller, instance
    controller.shutdown()
    app.dispose()


def test_start_from_the_menu_then_reset_from_the_dialog(qtbot, fresh_tray) -> None:  # noqa: ANN001
    tray, controller, instance = fresh_tray
    qtbot.waitUntil(lambda: controller.state in ("stopped", "error"), timeout=30_000)
    tray.menu.aboutToShow.emit()
    assert Action.START in tray.visible_actions() and Action.STOP not in tray.visible_actions()

    tray.actions[Action.START].trigger()
    qtbot.waitUntil(lambda: controller.state == "running", timeout=300_000)
    assert icon_state(tray.status) == "running"

    client = instance.client()
    from tests.imagekit import busybox_image

    tag = busybox_image(client)
    client.containers.create(tag, ["true"], name="made-before-reset")

    tray.menu.aboutToShow.emit()
    tray.actions[Action.RESET].trigger()
    dialog = tray.reset_dialog
    assert dialog is not None
    qtbot.waitUntil(lambda: "1 container" in dialog.summary_label.text(), timeout=60_000)
    dialog.reset_button.click()
    qtbot.waitUntil(lambda: dialog.close_button.isEnabled(), timeout=600_000)
    assert "failed" not in dialog.progress_label.text().lower(), dialog.progress_label.text()
    assert controller.state == "running"
    names = [c.name for c in instance.client().containers.list(all=True)]
    assert "made-before-reset" not in names
    dialog.close_button.click()
