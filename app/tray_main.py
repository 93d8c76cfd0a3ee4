"""`pinnace-tray` (and `pinnace tray`): the tray app for one instance.

A second start for the same user and instance only asks the running tray to show itself.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from hypervisor.errors import PinnaceError
from hypervisor.paths import Paths

log = logging.getLogger("pinnace.tray")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pinnace-tray", description="Pinnace tray app")
    parser.add_argument("--name", default="default", metavar="INSTANCE", help="instance (default: default)")
    show = parser.add_mutually_exclusive_group()
    show.add_argument("--dashboard", action="store_const", const="dashboard", dest="show",
                      help="open the dashboard (in the running tray if there is one)")
    show.add_argument("--menu", action="store_const", const="menu", dest="show",
                      help="pop up the running tray's menu")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def quit_on_signals(app: Any) -> Any:
    """Ctrl-C and SIGTERM quit the tray cleanly. Python only runs signal handlers between
    bytecodes, so a timer wakes the interpreter out of Qt's C++ event loop now and then."""
    from PySide6.QtCore import QTimer

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: app.quit())
    timer = QTimer()
    timer.timeout.connect(lambda: None)
    timer.start(300)
    return timer


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        paths = Paths.for_instance(args.name)
        paths.ensure_dirs()
    except PinnaceError as exc:
        log.error("%s", exc)
        return 2

    # Qt is imported only now so `--help` and argument errors stay fast and display-free.
    from PySide6.QtWidgets import QApplication, QSystemTrayIcon

    from app.tray import icons
    from app.tray.controller import InstanceController
    from app.tray.single_instance import SingleInstance, send, server_name
    from app.tray.tray import TrayApp
    from hypervisor import settings as settings_mod
    from hypervisor.hostinfo import host_os
    from hypervisor.settings import HostFacts

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Pinnace")
    app.setOrganizationName("Pinnace")
    app.setDesktopFileName("pinnace")
    app.setQuitOnLastWindowClosed(False)
    app.setWindowIcon(icons.app_icon())

    name = server_name(paths, host_os())
    single = SingleInstance(name)
    if not single.claim():
        delivered = send(name, args.show or "dashboard")
        note = "" if delivered else " (but it did not answer)"
        log.info("Pinnace tray is already running for %s%s", args.name, note)
        return 0 if delivered else 1

    controller = InstanceController(paths)
    tray = TrayApp(paths, controller)
    single.activated.connect(tray.handle_message)
    if not QSystemTrayIcon.isSystemTrayAvailable():
        log.warning("no system tray on this desktop: showing the dashboard window instead")
        tray.open_dashboard()
    tray.show()
    controller.start_watching()
    if args.show:
        tray.handle_message(args.show)

    try:
        host = HostFacts.detect()
        settings = settings_mod.load(paths.settings_file, host)
    except PinnaceError as exc:
        log.warning("settings: %s", exc)
    else:
        if settings.start_vm_with_app:
            log.info("start_vm_with_app is set: starting the VM")
            controller.start()
    keep_alive = quit_on_signals(app)
    code = app.exec()
    keep_alive.stop()
    single.close()
    tray.dispose()
    app.processEvents()
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
