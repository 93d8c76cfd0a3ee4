"""Troubleshoot…: the window with fake run_checks / write_bundle (results arrive from the pool as
they finish, buttons wait for the work, the bundle goes where the user chose), the menu entry that
opens it, and the reset dialog's "Save a support bundle first"."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QFileDialog

from app.tray import troubleshoot_model
from app.tray.controller import InstanceController
from app.tray.menu_model import Action
from app.tray.reset_dialog import BUNDLE_FAILED_SUFFIX, ResetDialog
from app.tray.tray import TrayApp
from app.tray.troubleshoot import TroubleshootDialog
from app.tray.troubleshoot_model import COLOURS
from hypervisor import operations
from hypervisor.control import Status
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts
from tests.tray.fakes import SAMPLE_CHECKS, FakeDiagnose, SlowClient
from tests.tray.helpers import running_status

DEFAULT_NAME = re.compile(r"pinnace-diagnose-default-\d{8}T\d{6}Z\.tar\.gz")
SUMMARY = "1 check failed: docker context; 1 warning: Guest clock"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths.for_instance("default", {"PINNACE_HOME": str(tmp_path / "home")})
    p.ensure_dirs()
    return p


class SaveAs:
    """Stands in for QFileDialog.getSaveFileName: answers `answer` ("" is Cancel), records the calls."""

    def __init__(self) -> None:
        self.answer = ""
        self.asked: list[tuple[str, Path, str]] = []

    def __call__(self, parent: object, caption: str, start: str, filters: str) -> tuple[str, str]:
        self.asked.append((caption, Path(start), filters))
        return str(self.answer), ""

    @property
    def start_name(self) -> str:
        return self.asked[-1][1].name


@pytest.fixture
def save_as(monkeypatch: pytest.MonkeyPatch) -> SaveAs:
    fake = SaveAs()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(fake))
    return fake


def make_dialog(qtbot, paths: Paths, fake: FakeDiagnose) -> TroubleshootDialog:  # noqa: ANN001
    dialog = TroubleshootDialog(paths, run_checks=fake.run_checks, write_bundle=fake.write_bundle)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_results_arrive_while_running_and_buttons_wait(qtbot, paths: Paths) -> None:  # noqa: ANN001
    fake = FakeDiagnose(hold=True)
    dialog = make_dialog(qtbot, paths, fake)
    assert dialog.windowTitle() == "Pinnace — Troubleshoot"
    assert dialog.run_checks()
    # every result is on screen before run_checks returns (it is held): they come from on_result
    qtbot.waitUntil(lambda: dialog.table.rowCount() == len(SAMPLE_CHECKS), timeout=5000)
    assert dialog.summary_label.text() == f"Running checks… {len(SAMPLE_CHECKS)} done"
    assert not dialog.run_button.isEnabled() and not dialog.save_button.isEnabled()
    assert dialog.close_button.isEnabled()
    assert not dialog.run_checks() and fake.runs == 1  # no second run while one is going
    with qtbot.waitSignal(dialog.checks_done, timeout=5000):
        fake.release()
    assert dialog.run_button.isEnabled() and dialog.save_button.isEnabled()
    assert dialog.summary_label.text() == SUMMARY
    assert COLOURS["fail"] in dialog.summary_label.styleSheet()
    rows = dialog.row_texts()
    assert [r[0] for r in rows] == [c.title for c in SAMPLE_CHECKS]  # the library's order
    assert rows[6] == ("Guest clock", "! Warning", "guest is 2.4 s ahead of the host",
                       "Corrected at the next resume; `pinnace restart` sets it now.")
    assert dialog.table.item(6, 1).foreground().color().name() == COLOURS["warn"]
    assert dialog.table.item(9, 1).text() == "✗ Failed"
    assert dialog.table.item(9, 1).foreground().color().name() == COLOURS["fail"]
    assert fake.threads and threading.main_thread().name not in fake.threads

    with qtbot.waitSignal(dialog.checks_done, timeout=5000):
        dialog.run_button.click()
    assert fake.runs == 2 and dialog.table.rowCount() == len(SAMPLE_CHECKS)  # refilled, not appended


def test_all_passing_summary(qtbot, paths: Paths) -> None:  # noqa: ANN001
    dialog = make_dialog(qtbot, paths, FakeDiagnose(tuple(c for c in SAMPLE_CHECKS if c.outcome == "pass")))
    with qtbot.waitSignal(dialog.checks_done, timeout=5000):
        dialog.run_checks()
    assert dialog.summary_label.text() == "All 10 checks passed"
    assert COLOURS["pass"] in dialog.summary_label.styleSheet()


def test_checks_that_cannot_run_say_so_in_one_line(qtbot, paths: Paths) -> None:  # noqa: ANN001
    def broken(paths: Paths, on_result: Any = None) -> list[Any]:
        on_result(SAMPLE_CHECKS[0])
        raise ConnectionError("agent socket refused\nstack…")

    dialog = TroubleshootDialog(paths, run_checks=broken)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.checks_done, timeout=5000):
        dialog.run_checks()
    assert dialog.summary_label.text() == "The checks could not run: agent socket refused (after 1 check)"
    assert dialog.run_button.isEnabled()


def test_missing_library_is_reported_not_raised(qtbot, paths: Paths, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "hypervisor.diagnose", None)  # `import` raises ImportError
    dialog = TroubleshootDialog(paths)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.checks_done, timeout=5000):
        dialog.run_checks()
    assert dialog.summary_label.text().startswith("The checks could not run: the diagnostics are not available")


def test_save_bundle_asks_where_then_writes_on_the_pool(qtbot, paths: Paths, save_as, tmp_path: Path) -> None:  # noqa: ANN001
    fake = FakeDiagnose(hold=True)
    fake.release()
    dialog = make_dialog(qtbot, paths, fake)
    with qtbot.waitSignal(dialog.checks_done, timeout=5000):
        dialog.run_checks()
    fake.gate.clear()  # hold the bundle
    save_as.answer = tmp_path / "report"
    assert dialog.save_bundle()
    assert DEFAULT_NAME.fullmatch(save_as.start_name), save_as.asked
    assert save_as.asked[0][0] == "Save support bundle" and "*.tar.gz" in save_as.asked[0][2]
    qtbot.waitUntil(lambda: "collecting the agent log" in dialog.bundle_label.text(), timeout=5000)
    assert dialog.bundle_label.text() == "Saving the support bundle: collecting the agent log…"
    assert not dialog.save_button.isEnabled() and not dialog.run_button.isEnabled()
    fake.release()
    qtbot.waitUntil(lambda: dialog.save_button.isEnabled(), timeout=5000)
    dest = tmp_path / "report.tar.gz"
    assert fake.bundles == [dest] and dest.read_bytes() == b"bundle"
    assert dialog.bundle_label.text() == f"Support bundle saved: {dest}"
    assert threading.main_thread().name not in fake.threads


def test_save_bundle_cancelled_or_failing(qtbot, paths: Paths, save_as, tmp_path: Path) -> None:  # noqa: ANN001
    fake = FakeDiagnose(bundle_error=OSError("No space left on device\nmore"))
    dialog = make_dialog(qtbot, paths, fake)
    assert not dialog.save_bundle()  # the save dialog was cancelled
    assert fake.bundles == [] and dialog.bundle_label.isHidden()
    save_as.answer = tmp_path / "b.tar.gz"
    dialog.save_button.click()
    qtbot.waitUntil(lambda: "Could not" in dialog.bundle_label.text(), timeout=5000)
    assert dialog.bundle_label.text() == "Could not save the support bundle: No space left on device"
    assert COLOURS["fail"] in dialog.bundle_label.styleSheet()
    assert dialog.save_button.isEnabled()


# --- the menu entry -------------------------------------------------------------------------------


def make_tray(paths: Paths) -> tuple[TrayApp, InstanceController]:
    controller = InstanceController(paths, client_factory=lambda: SlowClient(running_status(), 0), watch=False)
    tray = TrayApp(paths, controller, host_os="linux", host_facts=HostFacts(cpus=4, memory_mib=8192, os="linux"),
                   app_quit=lambda: None)
    return tray, controller


@pytest.mark.parametrize("status", [None, Status("default", state="stopping"), running_status()])
def test_menu_entry_opens_one_window(qtbot, paths: Paths, monkeypatch, status) -> None:  # noqa: ANN001
    fake = FakeDiagnose()
    monkeypatch.setattr(troubleshoot_model, "diagnose_api", lambda: (fake.run_checks, fake.write_bundle))
    tray, controller = make_tray(paths)
    controller._on_status(status)
    controller.busy_op = "stop"  # even while an operation is in flight
    tray.menu.aboutToShow.emit()
    assert tray.actions[Action.TROUBLESHOOT].isEnabled()
    assert tray.actions[Action.TROUBLESHOOT].text() == "Troubleshoot…"
    tray.actions[Action.TROUBLESHOOT].trigger()
    dialog = tray.troubleshoot_dialog
    assert dialog is not None and dialog.isVisible()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: dialog.summary_label.text() == SUMMARY, timeout=5000)
    assert tray.open_troubleshoot() is dialog and fake.runs == 1  # open: raised, not run again
    dialog.close()
    with qtbot.waitSignal(dialog.checks_done, timeout=5000):
        assert tray.open_troubleshoot() is dialog  # closed: shown again with a fresh run
    assert fake.runs == 2
    tray.dispose()


# --- the reset dialog's bundle option -------------------------------------------------------------


@pytest.fixture
def resets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fake_reset(paths: Paths, **_kwargs: object) -> Status:
        calls.append(paths.instance)
        return Status(paths.instance, state="running")

    monkeypatch.setattr(operations, "reset", fake_reset)
    return calls


def make_reset(qtbot, paths: Paths, fake: FakeDiagnose) -> tuple[ResetDialog, InstanceController]:  # noqa: ANN001
    controller = InstanceController(paths, client_factory=lambda: SlowClient(running_status(), 0), watch=False)
    controller._on_status(running_status())
    dialog = ResetDialog(controller, write_bundle=fake.write_bundle)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog, controller


def test_reset_without_bundle_by_default(qtbot, paths: Paths, resets, save_as) -> None:  # noqa: ANN001
    fake = FakeDiagnose()
    dialog, controller = make_reset(qtbot, paths, fake)
    assert not dialog.bundle_box.isChecked()
    with qtbot.waitSignal(controller.operation_done, timeout=5000):
        dialog.reset_button.click()
    assert resets == ["default"] and fake.bundles == [] and save_as.asked == []
    assert dialog.progress_bundle_label.isHidden()


def test_reset_saves_the_bundle_first(qtbot, paths: Paths, resets, save_as, tmp_path: Path) -> None:  # noqa: ANN001
    fake = FakeDiagnose(hold=True)
    dialog, controller = make_reset(qtbot, paths, fake)
    dialog.bundle_box.setChecked(True)
    save_as.answer = tmp_path / "before-reset.tar.gz"
    dialog.reset_button.click()
    assert DEFAULT_NAME.fullmatch(save_as.start_name)
    qtbot.waitUntil(lambda: "collecting the agent log" in dialog.bundle_status.text(), timeout=5000)
    assert resets == [] and dialog.pages.currentIndex() == 0  # nothing reset while the bundle is written
    assert not dialog.reset_button.isEnabled() and not dialog.bundle_box.isEnabled()
    with qtbot.waitSignal(controller.operation_done, timeout=5000):
        fake.release()
    dest = tmp_path / "before-reset.tar.gz"
    assert fake.bundles == [dest] and dest.is_file()
    assert resets == ["default"] and dialog.pages.currentIndex() == 1
    assert dialog.progress_bundle_label.text() == f"Support bundle saved: {dest}"


def test_failed_bundle_does_not_reset_until_confirmed(qtbot, paths: Paths, resets, save_as, tmp_path: Path) -> None:  # noqa: ANN001
    fake = FakeDiagnose(bundle_error=PermissionError("[Errno 13] Permission denied: '/ro/b.tar.gz'"))
    dialog, controller = make_reset(qtbot, paths, fake)
    dialog.bundle_box.setChecked(True)
    save_as.answer = "/ro/b.tar.gz"
    dialog.reset_button.click()
    qtbot.waitUntil(lambda: dialog.reset_button.isEnabled(), timeout=5000)
    assert resets == [] and dialog.pages.currentIndex() == 0
    assert dialog.bundle_status.text().splitlines() == [
        "Could not save the support bundle: [Errno 13] Permission denied: '/ro/b.tar.gz'",
        BUNDLE_FAILED_SUFFIX,
    ]
    assert not dialog.bundle_box.isChecked()
    with qtbot.waitSignal(controller.operation_done, timeout=5000):
        dialog.reset_button.click()  # the user's second confirmation: reset without a bundle
    assert resets == ["default"] and fake.bundles == [Path("/ro/b.tar.gz")]


def test_reset_bundle_cancelled(qtbot, paths: Paths, resets, save_as) -> None:  # noqa: ANN001
    fake = FakeDiagnose(hold=True)
    dialog, _controller = make_reset(qtbot, paths, fake)
    dialog.bundle_box.setChecked(True)
    dialog.reset_button.click()  # the save dialog is cancelled: nothing happens
    assert fake.bundles == [] and resets == [] and dialog.reset_button.isEnabled()
    dialog.save_then_reset(None)
    qtbot.waitUntil(lambda: "collecting" in dialog.bundle_status.text(), timeout=5000)
    dialog.reject()  # Cancel while the bundle is written: it finishes, the VM is not reset
    fake.release()
    qtbot.waitUntil(lambda: dialog.reset_button.isEnabled(), timeout=5000)
    assert fake.bundles == [None] and resets == []
