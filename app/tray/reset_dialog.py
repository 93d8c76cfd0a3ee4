"""Reset VM…: confirm with exactly what is deleted, then show progress until the engine is back.

What a reset deletes (operations.reset_preview, as `pinnace reset` shows it) is read off the GUI
thread; the dialog opens at once with a placeholder. "Save a support bundle first" writes one
(hypervisor.diagnose.write_bundle, on the pool) before the reset starts; if that fails, the VM is
not reset until the user confirms again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.tray.controller import InstanceController
from app.tray.reset_summary import summary_text
from app.tray.status_text import status_line
from app.tray.tasks import run_task
from app.tray.troubleshoot import BundleSaver
from app.tray.troubleshoot_model import COLOURS, WriteBundle, bundle_saved_text
from hypervisor import operations
from hypervisor.control import Status
from hypervisor.engine import EngineUsage

log = logging.getLogger(__name__)


def progress_text(status: Status | None) -> str:
    if status is None:
        return "Waiting for the agent…"
    if status.state == "running" and status.engine_version:
        return f"Engine ready: Docker {status.engine_version}"
    return status_line(status)


BUNDLE_FAILED_SUFFIX = "The VM was not reset: press Reset VM again to reset without a bundle."
RESET_TEXT = "Reset VM"


class ResetDialog(QDialog):
    def __init__(
        self,
        controller: InstanceController,
        parent: QWidget | None = None,
        write_bundle: WriteBundle | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.setWindowTitle("Reset Pinnace VM")
        self.setMinimumWidth(460)
        self.pages = QStackedWidget(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)

        confirm = QWidget()
        c_layout = QVBoxLayout(confirm)
        title = QLabel("<b>Reset the VM to a clean engine?</b>")
        self.summary_label = QLabel("Reading what the engine holds…")
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary_label.setWordWrap(True)
        self.buttons = QDialogButtonBox()
        self.bundle_box = QCheckBox("Save a support bundle first")
        self.bundle_box.setToolTip("Logs, settings and diagnostic checks in one archive, for a bug report")
        self.bundle_status = QLabel()
        self.bundle_status.setWordWrap(True)
        self.bundle_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.bundle_status.hide()
        self.saver = BundleSaver(controller.paths, write_bundle, self)
        self.saver.progress.connect(self._show_bundle_progress)
        self.saver.saved.connect(self._on_bundle_saved)
        self.saver.failed.connect(self._on_bundle_failed)
        self.bundle_path: Path | None = None
        self._reset_after_save = False
        self.reset_button = QPushButton(RESET_TEXT)
        self.buttons.addButton(self.reset_button, QDialogButtonBox.ButtonRole.DestructiveRole)
        cancel = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.reset_button.setAutoDefault(False)
        cancel.setDefault(True)  # Enter must never wipe the engine
        self.buttons.rejected.connect(self.reject)
        self.reset_button.clicked.connect(self.confirm)
        for w in (title, self.summary_label):
            c_layout.addWidget(w)
        c_layout.addStretch(1)
        c_layout.addWidget(self.bundle_box)
        c_layout.addWidget(self.bundle_status)
        c_layout.addWidget(self.buttons)
        self.pages.addWidget(confirm)

        progress = QWidget()
        p_layout = QVBoxLayout(progress)
        self.progress_label = QLabel("Resetting…")
        self.progress_label.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 0)
        self.progress_bundle_label = QLabel()
        self.progress_bundle_label.setWordWrap(True)
        self.progress_bundle_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress_bundle_label.hide()
        self.close_button = QPushButton("Close")
        self.close_button.setEnabled(False)
        self.close_button.clicked.connect(self.accept)
        for w in (QLabel("<b>Resetting the VM</b>"), self.progress_label, self.progress_bar,
                  self.progress_bundle_label):
            p_layout.addWidget(w)
        p_layout.addStretch(1)
        p_layout.addWidget(self.close_button, alignment=Qt.AlignmentFlag.AlignRight)
        self.pages.addWidget(progress)

        self.summary: EngineUsage | None = None
        self._reset_finished = False
        status = controller.status
        run_task(lambda: operations.reset_preview(controller.paths, status), self, self._show_preview,
                 self._show_preview_error)

    def _show_preview(self, preview: object) -> None:
        self.summary = preview.engine if isinstance(preview, operations.ResetPreview) else None
        self.summary_label.setText(summary_text(self.summary))

    def _show_preview_error(self, exc: BaseException) -> None:
        log.info("reset preview failed: %s", exc)
        self._show_preview(None)

    def confirm(self) -> None:
        """Reset VM pressed: with the box ticked, ask where and save the bundle first."""
        if self.saver.running:
            return
        if not self.bundle_box.isChecked():
            self.start_reset()
            return
        dest = self.saver.ask_dest(self)
        if dest is not None:
            self.save_then_reset(dest)

    def save_then_reset(self, dest: Path | None) -> None:
        self._reset_after_save = True
        self.reset_button.setEnabled(False)
        self.bundle_box.setEnabled(False)
        self.saver.start(dest)

    def _show_bundle_progress(self, line: str, error: bool = False) -> None:
        self.bundle_status.setText(line)
        self.bundle_status.setStyleSheet(f"color: {COLOURS['fail']};" if error else "")
        self.bundle_status.show()

    def _on_bundle_saved(self, path: Path) -> None:
        self.bundle_path = path
        self._show_bundle_progress(bundle_saved_text(path))
        self.progress_bundle_label.setText(bundle_saved_text(path))
        self.progress_bundle_label.show()
        self.bundle_box.setChecked(False)
        self.bundle_box.setEnabled(True)
        self.reset_button.setEnabled(True)
        if self._reset_after_save:  # not when the dialog was cancelled meanwhile
            self._reset_after_save = False
            self.start_reset()

    def _on_bundle_failed(self, line: str) -> None:
        """No reset: the user sees why and decides again (untick to reset without, or retry)."""
        self._reset_after_save = False
        self._show_bundle_progress(f"{line}\n{BUNDLE_FAILED_SUFFIX}", error=True)
        self.bundle_box.setChecked(False)
        self.bundle_box.setEnabled(True)
        self.reset_button.setEnabled(True)

    def reject(self) -> None:
        self._reset_after_save = False
        super().reject()

    def start_reset(self) -> None:
        self.pages.setCurrentIndex(1)
        self.controller.status_changed.connect(self._on_status)
        self.controller.operation_done.connect(self._on_done)
        self.controller.operation_failed.connect(self._on_failed)
        self.controller.reset()
        self._on_status(self.controller.status)

    def _on_status(self, status: Status | None) -> None:
        if self._reset_finished and status is not None and status.state == "running":
            self._finish(progress_text(status))
            return
        if not self._reset_finished:
            self.progress_label.setText(progress_text(status))

    def _on_done(self, op: str) -> None:
        if op != "reset":
            return
        self._reset_finished = True
        status = self.controller.status
        if status is not None and status.state == "running" and status.engine_version:
            self._finish(progress_text(status))
        else:
            self.progress_label.setText("Reset done; waiting for the engine…")

    def _on_failed(self, op: str, message: str) -> None:
        if op == "reset":
            self._finish(f"Reset failed: {message}")

    def _finish(self, text: str) -> None:
        self.progress_label.setText(text)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self.close_button.setEnabled(True)
        for signal, slot in (
            (self.controller.status_changed, self._on_status),
            (self.controller.operation_done, self._on_done),
            (self.controller.operation_failed, self._on_failed),
        ):
            try:
                signal.disconnect(slot)
            except (RuntimeError, TypeError):
                pass
