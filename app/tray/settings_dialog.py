"""Settings…: the VM's shape and start options, shared folders and ports, the engine's proxy, extra
CA certificates and the engine's own daemon.json (engine.json), one tab each.

Every edit re-runs the CLI's validator (via settings_form.check) and the CLI's engine.json parser
(via engine_form.check) and shows their message next to the field, marking its tab; Save is only
possible when the whole form is valid. The owner persists the settings (`saved`); engine.json is
written here, before `saved`, so a restart the owner starts already boots with it. The running
engine's own dockerd is asked about engine.json only on demand, off the GUI thread (it is SSH).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFontDatabase, QIcon
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.tray import engine_form
from app.tray.engine_form import EngineEdit
from app.tray.settings_form import (
    ENGINE_KEY,
    SECTIONS,
    FormResult,
    FormValues,
    accel_choices,
    check,
    environment_proxy_note,
    error_index,
    host_additions_hint,
    restart_changes,
    restart_note,
    section_of,
    share_transport_choices,
)
from app.tray.status_text import one_line
from app.tray.tasks import run_task
from hypervisor.control import Status
from hypervisor.engine_config import ENGINE_FILE, EngineConfigError
from hypervisor.paths import Paths
from hypervisor.settings import MAX_DISK_GIB, HostFacts, Settings, Share

log = logging.getLogger(__name__)

ERROR_STYLE = "color: #c62828;"
OK_STYLE = "color: #2e7d32;"
ERROR_KEYS = ("cpus", "memory_mib", "disk_gib", "accel", "shares", "share_transport", "http_proxy",
              "https_proxy", "no_proxy", "ca_files", ENGINE_KEY, "form")
AskEngine = Callable[[dict[str, Any]], str | None]  # validate_in_guest's answer: None, "" or why not


def _small(text: str) -> QLabel:
    label = QLabel(f"<small>{text}</small>")
    label.setWordWrap(True)
    return label


class SettingsDialog(QDialog):
    """Emits `saved(settings, restart_requested)`; the owner persists and applies them.

    `paths` gives the Engine tab its engine.json and the running engine to ask; without it the tab
    is read-only. The choosers and `ask_engine` are replaceable so tests need no native dialogs.
    """

    saved = Signal(object, bool)
    engine_checked = Signal(str)  # the running engine's answer, as shown (tests wait on it)

    def __init__(
        self,
        settings: Settings,
        host: HostFacts,
        current_disk_gib: int | None,
        status: Status | None,
        parent: QWidget | None = None,
        *,
        paths: Paths | None = None,
        env: Mapping[str, str] | None = None,
        ask_engine: AskEngine | None = None,
        choose_folder: Callable[[], str] | None = None,
        choose_ca_files: Callable[[], list[str]] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Pinnace Settings")
        self.setMinimumWidth(600)
        self.original, self.host, self.current_disk_gib = settings, host, current_disk_gib
        # A paused VM is still up: what needs a restart applies only once it restarts.
        self.vm_running = status is not None and status.state in ("running", "starting", "paused")
        self.engine_running = status is not None and status.state == "running"
        self.status = status
        self.env = os.environ if env is None else env
        self.engine_file = paths.config_dir / ENGINE_FILE if paths is not None else None
        if ask_engine is None and paths is not None:
            ask_engine = _guest_asker(paths)
        self.ask_engine = ask_engine
        self.choose_folder = choose_folder or self._choose_folder
        self.choose_ca_files = choose_ca_files or self._choose_ca_files
        self.engine_original = engine_form.load(self.engine_file)
        self.engine_edit = self.engine_original
        self.engine_written = False
        self._guest_answer: tuple[str, str] | None = None  # (text asked about, dockerd's refusal)
        self.result_: FormResult = FormResult(settings, {})
        self.errors = {key: self._error_label() for key in ERROR_KEYS}

        self.tabs = QTabWidget()
        self.tab_index: dict[str, int] = {}
        for title, build in (("General", self._general_tab), ("Sharing & ports", self._sharing_tab),
                             ("Network", self._network_tab), ("Certificates", self._certificates_tab),
                             ("Engine", self._engine_tab)):
            self.tab_index[title] = self.tabs.addTab(build(), title.replace("&", "&&"))  # "&" is no mnemonic

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
        layout.addWidget(self.tabs)
        layout.addWidget(self.errors["form"])
        layout.addWidget(self.note)
        layout.addWidget(self.buttons)

        self.set_values(FormValues.from_settings(settings))
        self.engine_text.setPlainText(self.engine_original.text)
        self._connect_edits()
        self.revalidate()

    # --- the tabs ----------------------------------------------------------------------------

    def _general_tab(self) -> QWidget:
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
        for value, label in accel_choices(self.host.os):
            self.accel.addItem(label, value)
        if self.accel.findData(self.original.accel) < 0:
            self.accel.addItem(self.original.accel, self.original.accel)
        self.probe = QLabel(self._probe_text(self.status))
        self.probe.setWordWrap(True)
        self.start_at_login = QCheckBox("Start Pinnace when I log in")
        self.start_vm = QCheckBox("Start the VM when Pinnace starts")

        page = QWidget()
        form = QFormLayout(page)
        form.addRow("CPUs:", self.cpus)
        form.addRow("", self.errors["cpus"])
        form.addRow("Memory:", self.memory)
        form.addRow("", self.errors["memory_mib"])
        disk = self.current_disk_gib
        form.addRow("Disk size:", self.disk)
        form.addRow("", _small(f"can only grow (now {disk} GiB)" if disk else "can grow later"))
        form.addRow("", self.errors["disk_gib"])
        form.addRow("Accelerator:", self.accel)
        form.addRow("", self.probe)
        form.addRow("", self.errors["accel"])
        form.addRow("", self.start_at_login)
        form.addRow("", self.start_vm)
        return page

    def _sharing_tab(self) -> QWidget:
        self.shares = QTableWidget(0, 2)
        self.shares.setHorizontalHeaderLabels(["Folder", "Read-only"])
        self.shares.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.shares.verticalHeader().setVisible(False)
        header = self.shares.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.add_share_button = QPushButton("Add Folder…")
        self.remove_share_button = QPushButton("Remove")
        self.add_share_button.clicked.connect(self._pick_folder)
        self.remove_share_button.clicked.connect(self.remove_selected_shares)
        self.share_transport = QComboBox()
        for value, label in share_transport_choices(self.host.os):
            self.share_transport.addItem(label, value)
        if self.share_transport.findData(self.original.share_transport) < 0:
            self.share_transport.addItem(self.original.share_transport, self.original.share_transport)
        self.expose_ports = QCheckBox("Publish container ports on all of this host's network interfaces")

        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(QLabel("Shared folders (same path inside containers' bind mounts):"))
        layout.addWidget(self.shares)
        layout.addLayout(_button_row(self.add_share_button, self.remove_share_button))
        layout.addWidget(self.errors["shares"])
        form = QFormLayout()
        form.addRow("Transport:", self.share_transport)
        form.addRow("", self.errors["share_transport"])
        layout.addLayout(form)
        layout.addWidget(self.expose_ports)
        layout.addWidget(_small("Off: <tt>-p 8080:80</tt> is reachable from this machine only (localhost); "
                                "on: from other machines too, as with Docker on Linux."))
        return page

    def _network_tab(self) -> QWidget:
        self.http_proxy = QLineEdit()
        self.http_proxy.setPlaceholderText("http://proxy.example.com:3128")
        self.https_proxy = QLineEdit()
        self.https_proxy.setPlaceholderText("http://proxy.example.com:3128")
        self.no_proxy = QLineEdit()
        self.no_proxy.setPlaceholderText("localhost,.internal.example.com,10.0.0.0/8")
        self.proxy_from_env = QCheckBox("Use the host's environment for empty fields (http_proxy, https_proxy, "
                                        "no_proxy)")
        self.proxy_note = QLabel()
        self.proxy_note.setWordWrap(True)

        page = QWidget()
        form = QFormLayout(page)
        form.addRow(_small("The engine's proxy, for pulls, pushes and logins (containers get their own). "
                           "A proxy on this host's localhost is reached from the VM as the host."))
        form.addRow("HTTP proxy:", self.http_proxy)
        form.addRow("", self.errors["http_proxy"])
        form.addRow("HTTPS proxy:", self.https_proxy)
        form.addRow("", self.errors["https_proxy"])
        form.addRow("No proxy for:", self.no_proxy)
        form.addRow("", self.errors["no_proxy"])
        form.addRow("", self.proxy_from_env)
        form.addRow("", self.proxy_note)
        return page

    def _certificates_tab(self) -> QWidget:
        self.ca_files = QListWidget()
        self.ca_files.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.add_ca_button = QPushButton("Add Certificate…")
        self.remove_ca_button = QPushButton("Remove")
        self.add_ca_button.clicked.connect(self._pick_ca_files)
        self.remove_ca_button.clicked.connect(self.remove_selected_ca_files)
        self.host_ca = QCheckBox("Also trust the certificates added to this host's trust store")

        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(QLabel("Extra CA certificates (PEM files) the engine and the VM trust:"))
        layout.addWidget(_small("For a private registry or a TLS-inspecting proxy; each file is read at "
                                "every VM start."))
        layout.addWidget(self.ca_files)
        layout.addLayout(_button_row(self.add_ca_button, self.remove_ca_button))
        layout.addWidget(self.errors["ca_files"])
        layout.addWidget(self.host_ca)
        layout.addWidget(_small(host_additions_hint(self.host.os)))
        return page

    def _engine_tab(self) -> QWidget:
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.engine_text = QPlainTextEdit()
        self.engine_text.setFont(mono)
        self.engine_text.setTabChangesFocus(True)
        self.engine_text.setReadOnly(self.engine_file is None)
        self.engine_status = QLabel()
        self.engine_status.setWordWrap(True)
        self.engine_status.setStyleSheet(OK_STYLE)
        self.ask_engine_button = QPushButton("Check with the Running Engine")
        self.ask_engine_button.clicked.connect(self.check_with_engine)
        self.engine_answer = QLabel()
        self.engine_answer.setWordWrap(True)
        self.show_merged = QPushButton("Show What the Engine Gets")
        self.show_merged.setCheckable(True)
        self.merged_view = QPlainTextEdit()
        self.merged_view.setFont(mono)
        self.merged_view.setReadOnly(True)
        self.merged_view.hide()
        self.show_merged.toggled.connect(self._toggle_merged)

        where = str(self.engine_file) if self.engine_file else "not available here (open Settings from the tray)"
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(_small(f"Your daemon.json settings (registry mirrors, insecure registries, log options, "
                                f"address pools…), merged over Pinnace's. File: <tt>{html.escape(where)}</tt>"))
        layout.addWidget(self.engine_text, 2)
        layout.addWidget(self.errors[ENGINE_KEY])
        layout.addWidget(self.engine_status)
        layout.addLayout(_button_row(self.ask_engine_button, self.show_merged))
        layout.addWidget(self.engine_answer)
        layout.addWidget(self.merged_view, 2)
        return page

    def _connect_edits(self) -> None:
        for spin in (self.cpus, self.memory, self.disk):
            spin.valueChanged.connect(self.revalidate)
        for combo in (self.accel, self.share_transport):
            combo.currentIndexChanged.connect(self.revalidate)
        for box in (self.start_at_login, self.start_vm, self.expose_ports, self.proxy_from_env, self.host_ca):
            box.toggled.connect(self.revalidate)
        for line in (self.http_proxy, self.https_proxy, self.no_proxy):
            line.textChanged.connect(self.revalidate)
        self.shares.itemChanged.connect(self.revalidate)
        self.engine_text.textChanged.connect(self.revalidate)
        self.shares.itemSelectionChanged.connect(self._update_list_buttons)
        self.ca_files.itemSelectionChanged.connect(self._update_list_buttons)

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

    # --- values ------------------------------------------------------------------------------

    def set_values(self, v: FormValues) -> None:
        self.cpus.setValue(v.cpus)
        self.memory.setValue(v.memory_mib)
        self.disk.setValue(v.disk_gib)
        self.accel.setCurrentIndex(max(0, self.accel.findData(v.accel)))
        self.start_at_login.setChecked(v.start_at_login)
        self.start_vm.setChecked(v.start_vm_with_app)
        self.shares.setRowCount(0)
        for share in v.shares:
            self.add_share(share.path, share.read_only)
        self.share_transport.setCurrentIndex(max(0, self.share_transport.findData(v.share_transport)))
        self.expose_ports.setChecked(v.expose_ports_on_all_interfaces)
        self.http_proxy.setText(v.http_proxy)
        self.https_proxy.setText(v.https_proxy)
        self.no_proxy.setText(v.no_proxy)
        self.proxy_from_env.setChecked(v.proxy_from_environment)
        self.ca_files.clear()
        self.ca_files.addItems(list(v.ca_files))
        self.host_ca.setChecked(v.host_ca_additions)
        self._update_list_buttons()

    def values(self) -> FormValues:
        return FormValues(
            cpus=self.cpus.value(),
            memory_mib=self.memory.value(),
            disk_gib=self.disk.value(),
            accel=str(self.accel.currentData()),
            start_at_login=self.start_at_login.isChecked(),
            start_vm_with_app=self.start_vm.isChecked(),
            shares=tuple(self._share_at(row) for row in range(self.shares.rowCount())),
            share_transport=str(self.share_transport.currentData()),
            expose_ports_on_all_interfaces=self.expose_ports.isChecked(),
            http_proxy=self.http_proxy.text().strip(),
            https_proxy=self.https_proxy.text().strip(),
            no_proxy=self.no_proxy.text().strip(),
            proxy_from_environment=self.proxy_from_env.isChecked(),
            ca_files=tuple(self.ca_files.item(i).text() for i in range(self.ca_files.count())),
            host_ca_additions=self.host_ca.isChecked(),
        )

    def _share_at(self, row: int) -> Share:
        path, read_only = self.shares.item(row, 0), self.shares.item(row, 1)
        return Share(path.text(), read_only.checkState() == Qt.CheckState.Checked)

    # --- the lists ---------------------------------------------------------------------------

    def add_share(self, path: str, read_only: bool = False) -> None:
        if any(self._share_at(r).path == path for r in range(self.shares.rowCount())):
            return
        blocker = self.shares.blockSignals(True)  # one revalidation for the row, not one per cell
        row = self.shares.rowCount()
        self.shares.insertRow(row)
        folder = QTableWidgetItem(path)
        folder.setFlags(folder.flags() & ~Qt.ItemFlag.ItemIsEditable)
        flag = QTableWidgetItem()
        flag.setFlags((flag.flags() | Qt.ItemFlag.ItemIsUserCheckable) & ~Qt.ItemFlag.ItemIsEditable)
        flag.setCheckState(Qt.CheckState.Checked if read_only else Qt.CheckState.Unchecked)
        self.shares.setItem(row, 0, folder)
        self.shares.setItem(row, 1, flag)
        self.shares.blockSignals(blocker)
        self.revalidate()

    def remove_selected_shares(self) -> None:
        for row in sorted({i.row() for i in self.shares.selectedIndexes()}, reverse=True):
            self.shares.removeRow(row)
        self._update_list_buttons()
        self.revalidate()

    def add_ca_files(self, paths: list[str]) -> None:
        present = {self.ca_files.item(i).text() for i in range(self.ca_files.count())}
        self.ca_files.addItems([p for p in paths if p not in present])
        self.revalidate()

    def remove_selected_ca_files(self) -> None:
        for item in self.ca_files.selectedItems():
            self.ca_files.takeItem(self.ca_files.row(item))
        self._update_list_buttons()
        self.revalidate()

    def _pick_folder(self) -> None:
        path = self.choose_folder()
        if path:
            self.add_share(path)

    def _pick_ca_files(self) -> None:
        paths = self.choose_ca_files()
        if paths:
            self.add_ca_files(paths)

    def _choose_folder(self) -> str:
        return QFileDialog.getExistingDirectory(self, "Share a Folder", str(Path.home()))

    def _choose_ca_files(self) -> list[str]:
        files, _filter = QFileDialog.getOpenFileNames(
            self, "Add CA Certificates", str(Path.home()), "PEM certificates (*.pem *.crt *.cer);;All files (*)")
        return files

    def _update_list_buttons(self) -> None:
        self.remove_share_button.setEnabled(bool(self.shares.selectedIndexes()))
        self.remove_ca_button.setEnabled(bool(self.ca_files.selectedItems()))

    # --- the engine --------------------------------------------------------------------------

    def _read_engine(self) -> EngineEdit:
        text = self.engine_text.toPlainText()
        answer = self._guest_answer
        refusal = answer[1] if answer is not None and answer[0] == text else ""
        if answer is not None and answer[0] != text:
            self.engine_answer.clear()  # it was about another text
        return engine_form.check(text, guest_refusal=refusal)

    def _toggle_merged(self, shown: bool) -> None:
        self.merged_view.setVisible(shown)
        self.show_merged.setText("Hide What the Engine Gets" if shown else "Show What the Engine Gets")
        self._show_merged()

    def _show_merged(self) -> None:
        """Kept current while shown; greyed (with the last good result) while the text is refused."""
        self.merged_view.setEnabled(self.engine_edit.ok)
        if self.engine_edit.ok and self.show_merged.isChecked():
            text = engine_form.merged_text(self.engine_edit, self.values(), self.env)
            if text != self.merged_view.toPlainText():
                self.merged_view.setPlainText(text)

    def check_with_engine(self) -> None:
        """Ask the running engine's dockerd about the merged file, off the GUI thread (SSH)."""
        ask, edit = self.ask_engine, self.engine_edit
        if ask is None or not edit.ok:
            return
        text, config = edit.text, engine_form.merged_config(edit, self.values(), self.env)
        self.ask_engine_button.setEnabled(False)
        self.engine_answer.setStyleSheet("")
        self.engine_answer.setText("Asking the running engine…")
        run_task(lambda: ask(config), self, on_ok=lambda answer: self._on_engine_answer(text, answer),
                 on_error=lambda exc: self._on_engine_answer(text, None, str(exc)), name="validate engine.json")

    def _on_engine_answer(self, text: str, answer: str | None, failure: str = "") -> None:
        if answer:
            self._guest_answer = (text, answer)
            shown = ""  # the refusal is the engine error, next to the editor
        elif answer == "":
            self._guest_answer = (text, "")
            shown = "The running engine accepts it."
        else:
            why = f" ({failure})" if failure else ""
            shown = (f"The running engine could not be asked{why}; the host's checks passed, and the engine "
                     f"checks it again at the next start.")
        self.engine_answer.setStyleSheet(OK_STYLE if answer == "" else "")
        self.engine_answer.setText(shown)
        self.revalidate()
        self.engine_checked.emit(shown or answer or "")

    # --- validation and saving ---------------------------------------------------------------

    def revalidate(self) -> FormResult:
        values = self.values()
        self.result_ = check(values, self.original, self.host, self.current_disk_gib)
        self.engine_edit = self._read_engine()
        engine_blocks = engine_form.blocks_save(self.engine_original, self.engine_edit)
        errors = dict(self.result_.errors)
        if not self.engine_edit.ok:
            kept = "" if engine_blocks else " (unchanged: the engine keeps its last good configuration)"
            errors[ENGINE_KEY] = self.engine_edit.error + kept
        self._show_errors(errors)
        ok = self.result_.ok and not engine_blocks
        self.engine_status.setText("" if not self.engine_edit.ok else engine_form.status_line(self.engine_edit))
        self.engine_status.setVisible(self.engine_edit.ok)
        self.ask_engine_button.setEnabled(self.ask_engine is not None and self.engine_running and self.engine_edit.ok)
        self.proxy_note.setText(f"<small>{html.escape(environment_proxy_note(values, self.env))}</small>")
        self._show_merged()

        changes = restart_changes(self.original, self.result_.settings, self.engine_changed()) if ok else []
        needs_restart = bool(changes) and self.vm_running
        self.note.setText(restart_note(changes) if needs_restart else "")
        self.save_button.setEnabled(ok)
        self.restart_button.setVisible(needs_restart)
        self.restart_button.setEnabled(ok)
        return self.result_

    def engine_changed(self) -> bool:
        return self.engine_edit.ok and engine_form.changed(self.engine_original, self.engine_edit)

    def _show_errors(self, errors: dict[str, str]) -> None:
        shown = {k: v for k, v in errors.items() if k in self.errors}
        stray = [v for k, v in errors.items() if k not in self.errors]
        if stray:
            shown["form"] = "; ".join([*stray, *([shown["form"]] if "form" in shown else [])])
        for key, label in self.errors.items():
            label.setText(shown.get(key, ""))
            label.setVisible(key in shown)
        warning = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        flagged = {section_of(k) for k in errors}
        for title in SECTIONS:
            self.tabs.setTabIcon(self.tab_index[title], warning if title in flagged else QIcon())
        self._mark_rows(errors)

    def _mark_rows(self, errors: dict[str, str]) -> None:
        """The list row an error names in red, so a long list shows which entry is meant."""
        bad_share, bad_ca = error_index(errors.get("shares", "")), error_index(errors.get("ca_files", ""))
        red, normal = QBrush(QColor("#c62828")), QBrush()
        blocker = self.shares.blockSignals(True)
        for row in range(self.shares.rowCount()):
            self.shares.item(row, 0).setForeground(red if row == bad_share else normal)
        self.shares.blockSignals(blocker)
        for row in range(self.ca_files.count()):
            self.ca_files.item(row).setForeground(red if row == bad_ca else normal)

    def _save(self, restart: bool) -> None:
        result = self.revalidate()
        if result.settings is None or not self.save_button.isEnabled():
            return
        if self.engine_file is not None and self.engine_changed():
            try:
                engine_form.save(self.engine_file, self.engine_edit)
            except (OSError, EngineConfigError) as exc:
                self.errors[ENGINE_KEY].setText(f"{self.engine_file}: cannot be saved ({exc})")
                self.errors[ENGINE_KEY].show()
                self.tabs.setCurrentIndex(self.tab_index["Engine"])
                return
            self.engine_written = True
        self.saved.emit(result.settings, restart)
        self.accept()


def _button_row(*buttons: QPushButton) -> QHBoxLayout:
    row = QHBoxLayout()
    for button in buttons:
        row.addWidget(button)
    row.addStretch(1)
    return row


def _guest_asker(paths: Paths) -> AskEngine:
    def ask(config: dict[str, Any]) -> str | None:
        from hypervisor import engine_validate  # SSH and keys: only loaded when asked

        return engine_validate.validate_in_guest(paths, config)

    return ask
