"""Settings…: the VM's CPUs, memory, disk, accelerator and the start options.

Every edit re-runs the CLI's validator (via settings_form.check) and shows its message next to
the field; Save is only possible when the whole form is valid.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.tray.settings_form import FormResult, FormValues, accel_choices, check, restart_changes, restart_note
from app.tray.status_text import one_line
from hypervisor.control import Status
from hypervisor.settings import MAX_DISK_GIB, HostFacts, Settings

log = logging.getLogger(__name__)

ERROR_STYLE = "color: #c62828;"


class SettingsDialog(QDialog):
    """Emits `saved(settings, restart_requested)`; the owner persists and applies them."""

    saved = Signal(object, bool)

    def __init__(
        self,
        settings: Settings,
        host: HostFacts,
        current_disk_gib: int | None,
        status: Status | None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Pinnace Settings")
        self.original, self.host, self.current_disk_gib = settings, host, current_disk_gib
        # A paused VM is still up: what needs a restart applies only once it restarts.
        self.vm_running = status is not None and status.state in ("running", "starting", "paused")
        self.result_: FormResult = FormResult(settings, {})

        self.cpus = QSpinBox()
        self.cpus.setRange(0, 1024)
        self.cpus.setSuffix(" CPUs")
        self.memory = QSpinBox()
        self.memory.setRange(0, 1024 * 1024)
        self.memory.setSingleStep(256)
        self.memory.setSuffix(" MiB")
        self.disk = QSpinBox()
        self.disk.setRange(0, MAX_DISK_GIB * 2)
        self.disk.setSuffix(" GiB")
        self.accel = QComboBox()
        for value, label in accel_choices(host.os):
            self.accel.addItem(label, value)
        if self.accel.findData(settings.accel) < 0:
            self.accel.addItem(settings.accel, settings.accel)
        self.probe = QLabel(self._probe_text(status))
        self.probe.setWordWrap(True)
        self.start_at_login = QCheckBox("Start Pinnace when I log in")
        self.start_vm = QCheckBox("Start the VM when Pinnace starts")

        keys = ("cpus", "memory_mib", "disk_gib", "accel", "form")
        self.errors = {key: self._error_label() for key in keys}
        form = QFormLayout()
        form.addRow("CPUs:", self.cpus)
        form.addRow("", self.errors["cpus"])
        form.addRow("Memory:", self.memory)
        form.addRow("", self.errors["memory_mib"])
        disk_hint = f"can only grow (now {current_disk_gib} GiB)" if current_disk_gib else "can grow later"
        form.addRow("Disk size:", self.disk)
        form.addRow("", QLabel(f"<small>{disk_hint}</small>"))
        form.addRow("", self.errors["disk_gib"])
        form.addRow("Accelerator:", self.accel)
        form.addRow("", self.probe)
        form.addRow("", self.errors["accel"])
        form.addRow("", self.start_at_login)
        form.addRow("", self.start_vm)

        self.note = QLabel()
        self.note.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.save_button = QPushButton("Save")
        self.save_button.setDefault(True)
        self.restart_button = QPushButton("Save and Restart VM")
        self.buttons.addButton(self.restart_button, QDialogButtonBox.ButtonRole.ApplyRole)
        self.buttons.addButton(self.save_button, QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.rejected.connect(self.reject)
        self.save_button.clicked.connect(lambda: self._save(False))
        self.restart_button.clicked.connect(lambda: self._save(True))

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.errors["form"])
        layout.addWidget(self.note)
        layout.addWidget(self.buttons)

        self.set_values(FormValues.from_settings(settings))
        for spin in (self.cpus, self.memory, self.disk):
            spin.valueChanged.connect(self.revalidate)
        self.accel.currentIndexChanged.connect(self.revalidate)
        self.start_at_login.toggled.connect(self.revalidate)
        self.start_vm.toggled.connect(self.revalidate)
        self.revalidate()

    @staticmethod
    def _error_label() -> QLabel:
        label = QLabel()
        label.setStyleSheet(ERROR_STYLE)
        label.setWordWrap(True)
        label.hide()
        return label

    @staticmethod
    def _probe_text(status: Status | None) -> str:
        if status is None or not (status.accel_reason or status.accel_warning):
            return "<small>Last probe: not run yet (start the VM to probe)</small>"
        text = f"<small>Last probe: {one_line(status.accel_reason, 120)}"
        if status.accel_warning:
            text += f"<br>{one_line(status.accel_warning, 120)}"
        return text + "</small>"

    def set_values(self, v: FormValues) -> None:
        self.cpus.setValue(v.cpus)
        self.memory.setValue(v.memory_mib)
        self.disk.setValue(v.disk_gib)
        self.accel.setCurrentIndex(max(0, self.accel.findData(v.accel)))
        self.start_at_login.setChecked(v.start_at_login)
        self.start_vm.setChecked(v.start_vm_with_app)

    def values(self) -> FormValues:
        return FormValues(
            cpus=self.cpus.value(),
            memory_mib=self.memory.value(),
            disk_gib=self.disk.value(),
            accel=str(self.accel.currentData()),
            start_at_login=self.start_at_login.isChecked(),
            start_vm_with_app=self.start_vm.isChecked(),
        )

    def revalidate(self) -> FormResult:
        self.result_ = check(self.values(), self.original, self.host, self.current_disk_gib)
        for key, label in self.errors.items():
            message = self.result_.errors.get(key, "")
            label.setText(message)
            label.setVisible(bool(message))
        changes = restart_changes(self.original, self.result_.settings) if self.result_.settings else []
        needs_restart = bool(changes) and self.vm_running
        self.note.setText(restart_note(changes) if needs_restart else "")
        self.save_button.setEnabled(self.result_.ok)
        self.restart_button.setVisible(needs_restart)
        self.restart_button.setEnabled(self.result_.ok)
        return self.result_

    def _save(self, restart: bool) -> None:
        result = self.revalidate()
        if result.settings is None:
            return
        self.saved.emit(result.settings, restart)
        self.accept()
