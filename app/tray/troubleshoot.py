"""Troubleshoot…: hypervisor.diagnose's checks as a table, and a button that saves a support bundle.

Both library calls are slow (SSH, engine calls), so they run through `run_task`; the results and
progress lines their callbacks report on the worker are handed to the GUI thread by a signal, the
way tasks.Task hands back its result. `ChecksRunner` and `BundleSaver` are shared with the reset
dialog (which offers to save a bundle first).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QStandardPaths, Qt, Signal, Slot
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.tray import troubleshoot_model as model
from app.tray.tasks import run_task
from hypervisor.paths import Paths

log = logging.getLogger(__name__)

COLUMNS = ("Check", "Result", "Detail", "Hint")


class _Relay(QObject):
    """Carries a callback's values from a worker thread to the GUI thread (queued: this object
    lives on the GUI thread). Owned by the worker's closure, never by a Qt parent."""

    item = Signal(object)

    def send(self, value: object) -> None:
        try:
            self.item.emit(value)
        except RuntimeError:  # shutting down: Qt already dropped this object
            log.debug("relay: %r not delivered", value)


class ChecksRunner(QObject):
    """run_checks on the pool: `result(CheckResult)` as each check ends, then `finished(list)`,
    or `failed(str)` with one line."""

    result = Signal(object)
    finished = Signal(list)
    failed = Signal(str)

    def __init__(self, paths: Paths, run_checks: model.RunChecks | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.paths = paths
        self._run_checks = run_checks or model.call_run_checks
        self.running = False

    def start(self) -> bool:
        if self.running:
            return False
        self.running = True
        relay = _Relay()
        relay.item.connect(self._on_result)
        paths, fn = self.paths, self._run_checks
        run_task(lambda: fn(paths, on_result=relay.send), self, self._on_done, self._on_error, name="run-checks")
        return True

    @Slot(object)
    def _on_result(self, result: object) -> None:
        if self.running:
            self.result.emit(result)

    def _on_done(self, results: object) -> None:
        self.running = False
        self.finished.emit(list(results) if isinstance(results, list | tuple) else [])

    def _on_error(self, exc: BaseException) -> None:
        self.running = False
        log.warning("diagnostic checks failed: %s", exc)
        self.failed.emit(model.checks_error_text(exc))


class BundleSaver(QObject):
    """write_bundle on the pool: `progress(str)` lines (already worded for a status line), then
    `saved(Path)` or `failed(str)` with one line."""

    progress = Signal(str)
    saved = Signal(object)
    failed = Signal(str)

    def __init__(self, paths: Paths, write_bundle: model.WriteBundle | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.paths = paths
        self._write_bundle = write_bundle or model.call_write_bundle
        self.running = False

    def default_path(self, directory: Path | None = None) -> Path:
        if directory is None:
            found = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DownloadLocation)
            directory = Path(found) if found and Path(found).is_dir() else Path.home()
        return directory / model.bundle_name(self.paths.instance)

    def ask_dest(self, parent: QWidget | None, directory: Path | None = None) -> Path | None:
        """The save dialog, starting at pinnace-diagnose-<instance>-<UTC time>.tar.gz; None if cancelled."""
        chosen, _filter = QFileDialog.getSaveFileName(
            parent, "Save support bundle", str(self.default_path(directory)),
            "Support bundles (*.tar.gz);;All files (*)",
        )
        return model.bundle_dest(chosen)

    def start(self, dest: Path | None) -> bool:
        if self.running:
            return False
        self.running = True
        relay = _Relay()
        relay.item.connect(self._on_progress)
        paths, fn = self.paths, self._write_bundle
        self.progress.emit(model.bundle_progress_text("starting"))
        run_task(lambda: fn(paths, dest=dest, on_progress=relay.send), self, self._on_done, self._on_error,
                 name="write-bundle")
        return True

    @Slot(object)
    def _on_progress(self, line: object) -> None:
        if self.running:
            self.progress.emit(model.bundle_progress_text(str(line)))

    def _on_done(self, path: object) -> None:
        self.running = False
        log.info("support bundle saved: %s", path)
        self.saved.emit(Path(str(path)))

    def _on_error(self, exc: BaseException) -> None:
        self.running = False
        log.warning("support bundle not saved: %s", exc)
        self.failed.emit(model.bundle_error_text(exc))


def _table() -> QTableWidget:
    table = QTableWidget(0, len(COLUMNS))
    table.setHorizontalHeaderLabels(list(COLUMNS))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setWordWrap(True)
    table.verticalHeader().setVisible(False)
    header = table.horizontalHeader()
    header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    for column, mode in enumerate((QHeaderView.ResizeMode.ResizeToContents, QHeaderView.ResizeMode.ResizeToContents,
                                   QHeaderView.ResizeMode.Stretch, QHeaderView.ResizeMode.Stretch)):
        header.setSectionResizeMode(column, mode)
    return table


class TroubleshootDialog(QDialog):
    """Runs the checks when shown (`run_checks()`); `Run again` and the bundle button are disabled
    while the checks run or a bundle is being written."""

    checks_done = Signal()  # after the table shows a finished run (tests wait on it)

    def __init__(
        self,
        paths: Paths,
        run_checks: model.RunChecks | None = None,
        write_bundle: model.WriteBundle | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.paths = paths
        name = paths.instance
        self.setWindowTitle("Pinnace — Troubleshoot" if name == "default" else f"Pinnace ({name}) — Troubleshoot")
        self.resize(900, 520)
        self.results: list[Any] = []
        self.checks = ChecksRunner(paths, run_checks, self)
        self.checks.result.connect(self._on_result)
        self.checks.finished.connect(self._on_finished)
        self.checks.failed.connect(self._on_failed)
        self.saver = BundleSaver(paths, write_bundle, self)
        self.saver.progress.connect(self._set_bundle_status)
        self.saver.saved.connect(lambda path: self._set_bundle_status(model.bundle_saved_text(path)))
        self.saver.failed.connect(lambda line: self._set_bundle_status(line, error=True))
        self._last_dir: Path | None = None

        intro = QLabel("Pinnace checks the host, the agent, the VM and the Docker engine, in that order.")
        intro.setWordWrap(True)
        self.summary_label = QLabel("Not run yet")
        font = QFont(self.summary_label.font())
        font.setBold(True)
        self.summary_label.setFont(font)
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = _table()
        self.bundle_label = QLabel()
        self.bundle_label.setWordWrap(True)
        self.bundle_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.bundle_label.hide()

        self.run_button = QPushButton("Run again")
        self.save_button = QPushButton("Save support bundle…")
        self.close_button = QPushButton("Close")
        self.run_button.clicked.connect(self.run_checks)
        self.save_button.clicked.connect(self.save_bundle)
        self.close_button.clicked.connect(self.close)
        for b in (self.run_button, self.save_button):
            b.setAutoDefault(False)
        self.close_button.setDefault(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.save_button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.bundle_label)
        layout.addLayout(buttons)
        self._update_buttons()

    # --- state ----------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.checks.running or self.saver.running

    def _update_buttons(self) -> None:
        self.run_button.setEnabled(not self.busy)
        self.save_button.setEnabled(not self.busy)

    def _set_summary(self, text: str, level: str | None) -> None:
        self.summary_label.setText(text)
        colour = model.COLOURS.get(level or "", "")
        self.summary_label.setStyleSheet(f"color: {colour};" if colour else "")

    def _set_bundle_status(self, text: str, error: bool = False) -> None:
        self.bundle_label.setText(text)
        self.bundle_label.setStyleSheet(f"color: {model.COLOURS['fail']};" if error else "")
        self.bundle_label.show()
        self._update_buttons()

    # --- checks ---------------------------------------------------------------------------------

    def run_checks(self) -> bool:
        """Start a run (the table empties and fills as results arrive); False while one runs."""
        if self.busy or not self.checks.start():
            return False
        self.results = []
        self.table.setRowCount(0)
        self._set_summary(model.running_text(0), None)
        self._update_buttons()
        return True

    def _on_result(self, result: object) -> None:
        self.results.append(result)
        self._append_row(model.check_row(result))  # type: ignore[arg-type]
        self._set_summary(model.running_text(len(self.results)), None)

    def _on_finished(self, results: list[Any]) -> None:
        self.show_results(results or self.results)
        self._update_buttons()
        self.checks_done.emit()

    def _on_failed(self, line: str) -> None:
        self._set_summary(model.checks_failed_text(line, len(self.results)), "fail")
        self._update_buttons()
        self.checks_done.emit()

    def show_results(self, results: list[Any]) -> None:
        """The finished run: every row (in the library's order) and the summary line."""
        self.results = list(results)
        self.table.setRowCount(0)
        for row in model.check_rows(self.results):
            self._append_row(row)
        self._set_summary(model.summary_text(self.results), model.summary_level(self.results))

    def _append_row(self, row: model.CheckRow) -> None:
        i = self.table.rowCount()
        self.table.insertRow(i)
        for j, text in enumerate(row.cells):
            item = QTableWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, row.key)
            if text:
                item.setToolTip(text)
            if j == 1:
                item.setForeground(QBrush(QColor(row.colour)))
                font = item.font()
                font.setBold(True)
                item.setFont(font)
            self.table.setItem(i, j, item)
        self.table.resizeRowToContents(i)

    def row_texts(self) -> list[tuple[str, ...]]:
        """What the table shows, row by row (tests read it)."""
        return [
            tuple(self.table.item(i, j).text() for j in range(self.table.columnCount()))
            for i in range(self.table.rowCount())
        ]

    # --- support bundle -------------------------------------------------------------------------

    def save_bundle(self) -> bool:
        """Ask where, then write the bundle on the pool; False if cancelled or busy."""
        if self.busy:
            return False
        dest = self.saver.ask_dest(self, self._last_dir)
        if dest is None:
            return False
        self._last_dir = dest.parent
        return self.save_bundle_to(dest)

    def save_bundle_to(self, dest: Path | None) -> bool:
        if self.busy or not self.saver.start(dest):
            return False
        self._update_buttons()
        return True
