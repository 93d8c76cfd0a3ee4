"""Dashboard…: containers (with Start/Stop/Remove/Logs and a live log view) and images (with prune).

All engine calls run on the pool or on stream threads; the tables are refreshed (debounced)
whenever the engine's event stream reports something, so the window never polls or blocks.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QFont, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.tray.dashboard_model import ContainerRow, EngineSnapshot, ImageRow, prune_text, read_snapshot
from app.tray.status_text import size_text
from app.tray.streams import StreamReader
from app.tray.tasks import run_task
from hypervisor import engine

log = logging.getLogger(__name__)

CONTAINER_COLUMNS = ("Name", "Image", "State", "Ports", "Uptime")
IMAGE_COLUMNS = ("Image", "Size", "Created", "ID")
REFRESH_DEBOUNCE_MS = 300
LOG_TAIL = 500
MAX_LOG_LINES = 5000


def _table(columns: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    return table


class Dashboard(QWidget):
    refreshed = Signal()  # after the tables show a new snapshot (tests wait on it)

    def __init__(self, docker_socket: str, title: str = "Pinnace Dashboard", parent: QWidget | None = None):
        super().__init__(parent)
        self.docker_socket = docker_socket
        self.setWindowTitle(title)
        self.resize(860, 560)
        self.snapshot = EngineSnapshot()
        self._events: StreamReader | None = None
        self._logs: StreamReader | None = None
        self._log_container = ""
        self._refreshing = False
        self._refresh_again = False

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.hide()
        self.tabs = QTabWidget()

        # containers tab
        self.containers = _table(CONTAINER_COLUMNS)
        self.containers.itemSelectionChanged.connect(self._update_buttons)
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.remove_button = QPushButton("Remove")
        self.logs_button = QPushButton("Logs")
        self.start_button.clicked.connect(lambda: self._container_action("start"))
        self.stop_button.clicked.connect(lambda: self._container_action("stop"))
        self.remove_button.clicked.connect(lambda: self._container_action("remove"))
        self.logs_button.clicked.connect(self.follow_selected_logs)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.stop_button, self.remove_button, self.logs_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.log_title = QLabel("Logs: select a container and press Logs")
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(MAX_LOG_LINES)
        self.log_view.setFont(QFont("monospace"))
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.containers)
        top_layout.addLayout(buttons)
        bottom = QWidget()
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addWidget(self.log_title)
        bottom_layout.addWidget(self.log_view)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(bottom)
        self.tabs.addTab(split, "Containers")

        # images tab
        self.images = _table(IMAGE_COLUMNS)
        self.prune_button = QPushButton("Prune Unused Images…")
        self.prune_button.clicked.connect(self.prune)
        self.images_total = QLabel()
        images_tab = QWidget()
        images_layout = QVBoxLayout(images_tab)
        images_layout.addWidget(self.images)
        row = QHBoxLayout()
        row.addWidget(self.images_total)
        row.addStretch(1)
        row.addWidget(self.prune_button)
        images_layout.addLayout(row)
        self.tabs.addTab(images_tab, "Images")

        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(REFRESH_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.refresh)
        self._update_buttons()

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Show, raise and (re)connect to the engine."""
        self.show()
        self.raise_()
        self.activateWindow()
        self.connect_engine()

    def connect_engine(self) -> None:
        if self._events is None:
            self._events = StreamReader(
                self._open_events, reconnect_after=2.0, name="engine-events", parent=self
            )
            self._events.item.connect(self._on_event)
            self._events.start()
        self.refresh()

    def _open_events(self) -> Any:
        return engine.events(self.docker_socket)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        self.disconnect_engine()
        super().closeEvent(event)

    def disconnect_engine(self) -> None:
        for reader in (self._events, self._logs):
            if reader is not None:
                reader.stop()
        self._events = self._logs = None

    def _on_event(self, event: object) -> None:
        if isinstance(event, dict) and event.get("Type") in ("container", "image", "volume", None):
            self._debounce.start()

    # --- refreshing -----------------------------------------------------------------------------

    def refresh(self) -> None:
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        run_task(lambda: read_snapshot(self.docker_socket), self, self._on_snapshot, self._on_error)

    def _refresh_done(self) -> None:
        self._refreshing = False
        if self._refresh_again:
            self._refresh_again = False
            self.refresh()

    def _on_error(self, exc: BaseException) -> None:
        self._refresh_done()
        self.show_error(str(exc))

    def show_error(self, message: str) -> None:
        self.banner.setText(f"⚠ {message}")
        self.banner.show()

    def _on_snapshot(self, snap: object) -> None:
        self._refresh_done()
        if isinstance(snap, EngineSnapshot):
            self.banner.hide()
            self.show_snapshot(snap)

    def show_snapshot(self, snap: EngineSnapshot) -> None:
        """Render a snapshot (also used by screenshots with sample data)."""
        selected = self.selected_container()
        self.snapshot = snap
        self._fill(self.containers, [self._container_cells(r) for r in snap.containers])
        image_cells = [(r.tags, r.size, r.created, r.id.removeprefix("sha256:")[:12]) for r in snap.images]
        self._fill(self.images, image_cells)
        total = sum(r.size_bytes for r in snap.images)
        self.images_total.setText(f"{len(snap.images)} images, {size_text(total)}")
        if selected is not None:
            for i, row in enumerate(snap.containers):
                if row.id == selected.id:
                    self.containers.selectRow(i)
        self._update_buttons()
        self.refreshed.emit()

    @staticmethod
    def _container_cells(r: ContainerRow) -> tuple[str, ...]:
        return (r.name, r.image, r.state, r.ports, r.uptime)

    @staticmethod
    def _fill(table: QTableWidget, rows: list[tuple[str, ...]]) -> None:
        table.setRowCount(len(rows))
        for i, cells in enumerate(rows):
            for j, text in enumerate(cells):
                table.setItem(i, j, QTableWidgetItem(text))

    def container_names(self) -> list[str]:
        return [r.name for r in self.snapshot.containers]

    def selected_container(self) -> ContainerRow | None:
        rows = self.containers.selectionModel().selectedRows() if self.containers.selectionModel() else []
        if not rows or rows[0].row() >= len(self.snapshot.containers):
            return None
        return self.snapshot.containers[rows[0].row()]

    def selected_image(self) -> ImageRow | None:
        rows = self.images.selectionModel().selectedRows()
        return self.snapshot.images[rows[0].row()] if rows else None

    def _update_buttons(self) -> None:
        row = self.selected_container()
        self.start_button.setEnabled(row is not None and not row.running)
        self.stop_button.setEnabled(row is not None and row.running)
        self.remove_button.setEnabled(row is not None)
        self.logs_button.setEnabled(row is not None)

    # --- actions --------------------------------------------------------------------------------

    def _container_action(self, action: str) -> None:
        row = self.selected_container()
        if row is None:
            return
        if action == "remove":
            answer = QMessageBox.question(
                self, "Remove container", f"Remove container {row.name}? A running one is stopped first."
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        run_task(
            lambda: engine.container_action(self.docker_socket, row.id, action),
            self,
            lambda _r: self.refresh(),
            lambda exc: self.show_error(str(exc)),
            name=f"container-{action}",
        )

    def follow_selected_logs(self) -> None:
        row = self.selected_container()
        if row is not None:
            self.follow_logs(row.id, row.name)

    def follow_logs(self, container_id: str, name: str) -> None:
        if self._logs is not None:
            self._logs.stop()
        self.log_view.clear()
        self.log_title.setText(f"Logs: {name} (following)")
        self._log_container = container_id

        address = self.docker_socket
        self._logs = StreamReader(lambda: engine.logs(address, container_id, LOG_TAIL), name="container-logs",
                                  parent=self)
        self._logs.item.connect(self._append_log)
        self._logs.ended.connect(lambda reason: self.log_title.setText(f"Logs: {name} ({reason})"))
        self._logs.start()

    def _append_log(self, chunk: object) -> None:
        text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else str(chunk)
        self.log_view.moveCursor(QTextCursor.MoveOperation.End)
        self.log_view.insertPlainText(text)
        self.log_view.moveCursor(QTextCursor.MoveOperation.End)

    def prune(self) -> None:
        question = "Remove every image that no container uses?\nThis frees disk space in the VM."
        answer = QMessageBox.question(self, "Prune images", question)
        if answer != QMessageBox.StandardButton.Yes:
            return
        self.prune_button.setEnabled(False)

        def done(report: object) -> None:
            self.prune_button.setEnabled(True)
            self.images_total.setText(prune_text(report if isinstance(report, dict) else {}))
            self.refresh()

        def failed(exc: BaseException) -> None:
            self.prune_button.setEnabled(True)
            self.show_error(str(exc))

        run_task(lambda: engine.prune_images(self.docker_socket), self, done, failed, name="prune")
