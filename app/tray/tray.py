"""The tray icon and its menu: renders menu_model entries and routes their actions.

The menu is rebuilt from the controller's latest status on every `aboutToShow`; dialogs and
the dashboard are created on first use and reused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, QPoint, QTimer, QUrl
from PySide6.QtGui import QAction, QCursor, QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox, QSystemTrayIcon

from app.autostart import Autostart
from app.tray import icons
from app.tray.controller import InstanceController
from app.tray.dashboard import Dashboard
from app.tray.menu_model import Action, build_menu, icon_state
from app.tray.notices import Notice
from app.tray.prefs import TrayPrefs, quit_plan
from app.tray.quit_dialog import QuitDialog
from app.tray.reset_dialog import ResetDialog
from app.tray.settings_dialog import SettingsDialog
from app.tray.status_text import context_command, docker_host, tooltip
from app.tray.troubleshoot import TroubleshootDialog
from hypervisor import launcher, operations
from hypervisor import settings as settings_mod
from hypervisor.control import Status
from hypervisor.errors import PinnaceError
from hypervisor.hostinfo import host_os as detect_host_os
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts, Settings

log = logging.getLogger(__name__)

ANIMATION_MS = 500
NOTICE_MS = 10000


class TrayApp(QObject):
    def __init__(
        self,
        paths: Paths,
        controller: InstanceController,
        host_os: str | None = None,
        host_facts: HostFacts | None = None,
        app_quit: Callable[[], None] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.paths, self.controller = paths, controller
        self.host_os = host_os or detect_host_os()
        self._host_facts = host_facts
        self._app_quit = app_quit or QApplication.quit
        self.prefs = TrayPrefs.load(paths.config_dir)
        self.actions: dict[Action, QAction] = {}
        self.last_notice: Notice | None = None
        self.dashboard: Dashboard | None = None
        self.settings_dialog: SettingsDialog | None = None
        self.reset_dialog: ResetDialog | None = None
        self.troubleshoot_dialog: TroubleshootDialog | None = None
        self.quitting = False

        self.menu = QMenu()
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self.icon = QSystemTrayIcon(self)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._on_activated)
        self._frame = 0
        self._anim = QTimer(self)
        self._anim.setInterval(ANIMATION_MS)
        self._anim.timeout.connect(self._next_frame)

        controller.status_changed.connect(self._on_status)
        controller.busy_changed.connect(lambda _b: self.rebuild_menu())
        controller.notice.connect(self.notify)
        controller.operation_failed.connect(self._on_failed)
        hints = QGuiApplication.styleHints()
        if hints is not None:
            hints.colorSchemeChanged.connect(lambda _s: self._update_icon())
        self.handlers: dict[Action, Callable[[], None]] = {
            # lambdas: QAction.triggered passes `checked`, which stop/restart would take as an argument
            Action.START: lambda: controller.start(),
            Action.STOP: lambda: controller.stop(),
            Action.RESTART: lambda: controller.restart(),
            Action.RESET: self.open_reset,
            Action.SETTINGS: self.open_settings,
            Action.DASHBOARD: self.open_dashboard,
            Action.COPY_CONTEXT: lambda: self._copy(context_command(paths.instance)),
            Action.COPY_DOCKER_HOST: lambda: self._copy(docker_host(self.docker_socket, self.host_os)),
            Action.OPEN_LOGS: self.open_logs,
            Action.TROUBLESHOOT: self.open_troubleshoot,
            Action.QUIT: self.quit,
        }
        self.rebuild_menu()
        self._update_icon()

    # --- status ---------------------------------------------------------------------------------

    @property
    def status(self) -> Status | None:
        return self.controller.status

    @property
    def docker_socket(self) -> str:
        if self.status is not None and self.status.docker_socket:
            return self.status.docker_socket
        return str(launcher.engine_address(self.paths))

    @property
    def host_facts(self) -> HostFacts:
        if self._host_facts is None:
            self._host_facts = HostFacts.detect()
        return self._host_facts

    def show(self) -> None:
        self.icon.show()

    def _on_status(self, _status: Status | None) -> None:
        self._update_icon()
        if self.menu.isVisible():
            self.rebuild_menu()

    def _update_icon(self) -> None:
        state = icon_state(self.status)
        if state == "starting" and not self._anim.isActive():
            self._anim.start()
        elif state != "starting":
            self._anim.stop()
            self._frame = 0
        frame = "starting-alt" if state == "starting" and self._frame % 2 else state
        self.icon.setIcon(icons.state_icon(frame, self.host_os))
        self.icon.setToolTip(tooltip(self.status, self.paths.instance))

    def _next_frame(self) -> None:
        self._frame += 1
        self._update_icon()

    # --- menu -----------------------------------------------------------------------------------

    def rebuild_menu(self) -> None:
        self.menu.clear()
        self.actions.clear()
        for entry in build_menu(self.status, self.paths.instance, busy=self.controller.busy):
            if entry.separator:
                self.menu.addSeparator()
                continue
            qaction = self.menu.addAction(entry.text)
            qaction.setEnabled(entry.enabled and not self.quitting)
            if entry.action is None:
                self.status_action = qaction
                continue
            self.actions[entry.action] = qaction
            qaction.triggered.connect(self.handlers[entry.action])

    def visible_actions(self) -> list[Action]:
        return list(self.actions)

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason == QSystemTrayIcon.ActivationReason.Trigger and self.host_os != "darwin":
            self.popup_menu()
        elif reason == QSystemTrayIcon.ActivationReason.DoubleClick:
            self.open_dashboard()

    def popup_menu(self) -> None:
        """Under the icon when its geometry is known; some X11 trays report it relative to their
        own window (at 0,0), and then the pointer, which is where a click happened, is better."""
        geometry = self.icon.geometry()
        known = not geometry.isEmpty() and geometry.topLeft() != QPoint(0, 0)
        self.menu.popup(geometry.bottomLeft() if known else QCursor.pos())

    def handle_message(self, message: str) -> None:
        """A second `pinnace-tray` asked us to show something."""
        if message == "menu":
            self.popup_menu()
        elif message == "settings":
            self.open_settings()
        else:
            self.open_dashboard()

    # --- notifications --------------------------------------------------------------------------

    def notify(self, notice: Notice) -> None:
        self.last_notice = notice
        icons_ = QSystemTrayIcon.MessageIcon
        kind = icons_.Critical if notice.critical else icons_.Warning if notice.warning else icons_.Information
        if self.icon.isVisible() and QSystemTrayIcon.supportsMessages():
            self.icon.showMessage(notice.title, notice.message, kind, NOTICE_MS)

    def _on_failed(self, op: str, message: str) -> None:
        if op in ("stop", "restart"):  # start failures already notify; reset shows its own dialog
            self.notify(Notice(f"Pinnace could not {op}", message, critical=True))

    # --- actions --------------------------------------------------------------------------------

    def _copy(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)
        log.info("copied %r", text)

    def open_logs(self) -> None:
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.paths.log_dir)))

    def open_dashboard(self) -> Dashboard:
        if self.dashboard is None:
            name = self.paths.instance
            title = "Pinnace Dashboard" if name == "default" else f"Pinnace Dashboard ({name})"
            self.dashboard = Dashboard(self.docker_socket, title)
        else:
            self.dashboard.docker_socket = self.docker_socket
        self.dashboard.open()
        return self.dashboard

    def open_reset(self) -> ResetDialog:
        if self.reset_dialog is not None and self.reset_dialog.isVisible():
            self.reset_dialog.raise_()
            return self.reset_dialog
        self.reset_dialog = ResetDialog(self.controller)
        self.reset_dialog.show()
        self.reset_dialog.raise_()
        return self.reset_dialog

    def open_troubleshoot(self) -> TroubleshootDialog:
        """One window, reused: raised if open; shown again (with a fresh run of the checks) if closed."""
        dialog = self.troubleshoot_dialog
        if dialog is None:
            dialog = self.troubleshoot_dialog = TroubleshootDialog(self.paths)
        if not dialog.isVisible():
            dialog.run_checks()  # no-op while a run or a bundle from the last opening is still going
            dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def _current_disk_gib(self, settings: Settings) -> int | None:
        if self.status is not None and self.status.disk_gib:
            return self.status.disk_gib
        return settings.disk_gib if self.paths.data_disk.exists() else None

    def open_settings(self) -> SettingsDialog | None:
        if self.settings_dialog is not None and self.settings_dialog.isVisible():
            self.settings_dialog.raise_()
            return self.settings_dialog
        try:
            current = settings_mod.load(self.paths.settings_file, self.host_facts)
        except PinnaceError as exc:
            QMessageBox.warning(None, "Pinnace Settings", f"The settings file is invalid:\n{exc}")
            return None
        dialog = SettingsDialog(current, self.host_facts, self._current_disk_gib(current), self.status,
                                paths=self.paths)
        dialog.saved.connect(lambda new, restart: self.save_settings(current, new, restart))
        self.settings_dialog = dialog
        dialog.show()
        dialog.raise_()
        return dialog

    def save_settings(self, old: Settings, new: Settings, restart: bool) -> bool:
        """Save now; with `restart`, the restart puts the old settings back if the VM fails with these."""
        try:
            change = operations.change_settings(self.paths, new, self.host_facts, self._current_disk_gib(old))
        except PinnaceError as exc:
            QMessageBox.warning(None, "Pinnace Settings", str(exc))
            return False
        if old.start_at_login != new.start_at_login:
            try:
                Autostart.for_host(self.paths.instance).apply(new.start_at_login)
            except OSError as exc:
                QMessageBox.warning(None, "Pinnace Settings", f"Could not change start at login: {exc}")
        if restart:
            self.controller.restart(change)
        return True

    # --- quitting -------------------------------------------------------------------------------

    def quit(self) -> None:
        plan = quit_plan(self.prefs.quit_action, self.controller.state)
        if plan == "ask":
            dialog = QuitDialog()
            dialog.exec()
            answer = dialog.answer()
            if answer.action is None:
                return
            if answer.remember:
                self.prefs.quit_action = answer.action
                try:
                    self.prefs.save(self.paths.config_dir)
                except OSError as exc:
                    log.warning("cannot save tray preferences: %s", exc)
            plan = answer.action
        self.finish_quit(stop_vm=plan == "stop")

    def finish_quit(self, stop_vm: bool) -> None:
        self.quitting = True
        if stop_vm:
            log.info("stopping the VM before quitting")
            self.controller.stop(then=self._exit)
        else:
            self._exit()

    def _exit(self) -> None:
        self.controller.shutdown()
        if self.dashboard is not None:
            self.dashboard.disconnect_engine()
            self.dashboard.close()
        self.icon.hide()
        self._app_quit()

    def dispose(self) -> None:
        """Delete our Qt objects in a known order while Qt is still fully alive; left to the
        interpreter's shutdown, PySide may destroy the menu before the tray icon using it."""
        self.controller.shutdown()
        self._anim.stop()
        self.icon.hide()
        self.icon.setContextMenu(None)
        for window in (self.dashboard, self.settings_dialog, self.reset_dialog, self.troubleshoot_dialog):
            if window is not None:
                window.close()
                window.deleteLater()
        self.dashboard = self.settings_dialog = self.reset_dialog = self.troubleshoot_dialog = None
        self.menu.deleteLater()
        self.icon.deleteLater()
