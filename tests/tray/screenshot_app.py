"""Run under a real X display with a tray host (see test_tray_screenshots.py): shows the tray
icon, opens its menu, the dashboard, the reset dialog, the Troubleshoot window and each tab of the
Settings dialog, and captures each with `import`.

Status and engine data are sample values: this checks what the widgets look like, not the agent.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from PySide6.QtCore import QEventLoop
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

from app.tray.controller import InstanceController
from app.tray.dashboard import Dashboard
from app.tray.dashboard_model import EngineSnapshot, container_row, image_row
from app.tray.reset_dialog import ResetDialog
from app.tray.settings_dialog import SettingsDialog
from app.tray.tray import TrayApp
from app.tray.troubleshoot import TroubleshootDialog
from app.tray.troubleshoot_model import summary_text
from hypervisor import settings as settings_mod
from hypervisor.engine import EngineUsage
from hypervisor.engine_config import ENGINE_FILE
from hypervisor.operations import ResetPreview
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts, Share
from tests.tray.fakes import SAMPLE_CHECKS, FakeDiagnose
from tests.tray.helpers import hold_spare_references, running_status
from tests.tray.test_tray_settings import make_pem

NOW = int(time.time())
CONTAINERS = [
    {"Id": "a1", "Names": ["/web"], "Image": "nginx:1.27", "State": "running", "Status": "Up 12 minutes",
     "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}]},
    {"Id": "b2", "Names": ["/db"], "Image": "postgres:16", "State": "running", "Status": "Up 2 hours",
     "Ports": [{"IP": "127.0.0.1", "PrivatePort": 5432, "PublicPort": 5432, "Type": "tcp"}]},
    {"Id": "c3", "Names": ["/migrate"], "Image": "app:dev", "State": "exited", "Status": "Exited (0) 3 hours ago",
     "Ports": []},
]
IMAGES = [
    {"Id": "sha256:1f2e3d4c5b6a79880", "RepoTags": ["nginx:1.27"], "Size": 192_000_000, "Created": NOW - 86400 * 9},
    {"Id": "sha256:2a3b4c5d6e7f80911", "RepoTags": ["postgres:16"], "Size": 451_000_000, "Created": NOW - 86400 * 30},
    {"Id": "sha256:3c4d5e6f708192a3b", "RepoTags": ["app:dev"], "Size": 88_000_000, "Created": NOW - 7200},
]
DF = {
    "LayersSize": 731_000_000,
    "Images": IMAGES,
    "Containers": [{"State": c["State"], "SizeRw": 12_000_000} for c in CONTAINERS],
    "Volumes": [{"UsageData": {"Size": 220_000_000}}, {"UsageData": {"Size": 4096}}],
    "BuildCache": [],
}


def pump(app: QApplication, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.02)


def shot(app: QApplication, out: Path, name: str) -> None:
    pump(app, 0.8)
    subprocess.run(["import", "-window", "root", str(out / name)], check=True, timeout=30)
    print(f"saved {out / name}", flush=True)


BUNDLE = Path("/home/u/Downloads/pinnace-diagnose-default-20261201T101500Z.tar.gz")


def sample_bundle(paths: Paths, dest: Path | None = None, on_progress=None) -> Path:  # noqa: ANN001
    """write_bundle's shape; the path it reports is a sample too (nothing is written)."""
    if on_progress is not None:
        on_progress("collecting the agent log")
    return BUNDLE


def troubleshoot_shot(app: QApplication, out: Path, paths: Paths) -> bool:
    """The window as a finished run leaves it (13 checks: one warning, one failure, one skipped),
    after a saved bundle; the checks arrive through on_result like the library's."""
    fake = FakeDiagnose(SAMPLE_CHECKS)
    dialog = TroubleshootDialog(paths, run_checks=fake.run_checks, write_bundle=sample_bundle)
    dialog.move(40, 60)
    dialog.show()
    dialog.run_checks()
    deadline = time.monotonic() + 10
    while dialog.summary_label.text() != summary_text(SAMPLE_CHECKS) and time.monotonic() < deadline:
        pump(app, 0.1)
    dialog.save_bundle_to(BUNDLE)
    while "saved" not in dialog.bundle_label.text() and time.monotonic() < deadline:
        pump(app, 0.1)
    ok = dialog.summary_label.text() == summary_text(SAMPLE_CHECKS) and "saved" in dialog.bundle_label.text()
    if not ok:
        print(f"troubleshoot window not filled: {dialog.summary_label.text()!r} {dialog.bundle_label.text()!r}",
              file=sys.stderr)
    else:
        shot(app, out, "troubleshoot.png")
    dialog.close()
    dialog.deleteLater()
    return ok


SETTINGS_HOST = HostFacts(cpus=8, memory_mib=16384, os="linux")
SETTINGS_TABS = (("General", "settings-general.png"), ("Sharing & ports", "settings-sharing.png"),
                 ("Network", "settings-network.png"), ("Certificates", "settings-certificates.png"))
ENGINE_JSON = {"registry-mirrors": ["https://mirror.corp.example"], "log-opts": {"max-size": "10m", "max-file": "3"}}
ENGINE_TYPO = '{\n  "registry-mirror": ["https://mirror.corp.example"]\n}\n'


def sample_settings(home: Path, paths: Paths) -> settings_mod.Settings:
    """A settings file and an engine.json as a user behind a company proxy would have them."""
    projects, datasets, certs = home / "projects", home / "datasets", home / "certs"
    for folder in (projects, datasets, certs):
        folder.mkdir(parents=True, exist_ok=True)
    ca = certs / "corp-root-ca.pem"
    ca.write_text(make_pem())
    sample = dataclasses.replace(
        settings_mod.Settings.defaults(SETTINGS_HOST, home=str(home)), cpus=4, memory_mib=4096,
        shares=[Share(str(projects)), Share(str(datasets), read_only=True)], expose_ports_on_all_interfaces=True,
        http_proxy="http://proxy.corp.example:3128", https_proxy="http://proxy.corp.example:3128",
        no_proxy="localhost,127.0.0.1,.corp.example", proxy_from_environment=False, ca_files=[str(ca)],
        host_ca_additions=True)
    settings_mod.save(paths.settings_file, sample, SETTINGS_HOST)
    (paths.config_dir / ENGINE_FILE).write_text(json.dumps(ENGINE_JSON, indent=2) + "\n")
    return settings_mod.load(paths.settings_file, SETTINGS_HOST)


def settings_shots(app: QApplication, out: Path, home: Path, paths: Paths) -> bool:
    """Each tab as loaded from the files; the Engine tab with its merged view, then with a typo
    (its error shown, Save off); then the fixed text saved and read back."""
    loaded = sample_settings(home, paths)
    dialog = SettingsDialog(loaded, SETTINGS_HOST, 64, running_status(), paths=paths, env={})
    dialog.resize(640, 560)
    dialog.move(40, 60)
    dialog.show()
    problems = [] if dialog.save_button.isEnabled() else ["Save is off for the sample settings"]
    for title, name in SETTINGS_TABS:
        dialog.tabs.setCurrentIndex(dialog.tab_index[title])
        shot(app, out, name)
    dialog.tabs.setCurrentIndex(dialog.tab_index["Engine"])
    dialog.show_merged.setChecked(True)
    shot(app, out, "settings-engine.png")
    dialog.engine_text.setPlainText(ENGINE_TYPO)
    if dialog.save_button.isEnabled() or "'registry-mirror'" not in dialog.errors["engine"].text():
        problems.append(f"the typo was not refused: {dialog.errors['engine'].text()!r}")
    shot(app, out, "settings-engine-error.png")
    dialog.engine_text.setPlainText(ENGINE_TYPO.replace('"registry-mirror"', '"registry-mirrors"'))
    saved: list[settings_mod.Settings] = []
    dialog.saved.connect(lambda new, _restart: saved.append(new))
    dialog.save_button.click()
    pump(app, 0.2)
    if saved:
        settings_mod.save(paths.settings_file, saved[0], SETTINGS_HOST)  # as the tray does with `saved`
        if settings_mod.load(paths.settings_file, SETTINGS_HOST) != loaded:
            problems.append("the settings did not read back unchanged")
        engine = json.loads((paths.config_dir / ENGINE_FILE).read_text())
        if engine != {"registry-mirrors": ["https://mirror.corp.example"]}:
            problems.append(f"engine.json was not saved: {engine}")
    else:
        problems.append("Save did not emit `saved`")
    for problem in problems:
        print(f"settings dialog: {problem}", file=sys.stderr)
    dialog.close()
    dialog.deleteLater()
    return not problems


def main() -> int:
    hold_spare_references()
    out, home = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)
    deadline = time.monotonic() + 15
    while not QSystemTrayIcon.isSystemTrayAvailable():
        if time.monotonic() > deadline:
            print("no system tray appeared", file=sys.stderr)
            return 3
        pump(app, 0.2)

    paths = Paths.for_instance("default", {"PINNACE_HOME": str(home)})
    controller = InstanceController(paths, watch=False)
    tray = TrayApp(paths, controller, host_os="linux", app_quit=app.quit)
    controller._on_status(running_status())
    tray.show()
    deadline = time.monotonic() + 10
    while tray.icon.geometry().isEmpty() and time.monotonic() < deadline:
        pump(app, 0.2)
    geometry = tray.icon.geometry()
    print(f"tray icon geometry: {geometry.x()},{geometry.y()} {geometry.width()}x{geometry.height()}", flush=True)
    if geometry.isEmpty():
        print("the tray icon was not embedded", file=sys.stderr)
        return 4
    shot(app, out, "tray-icon.png")
    zoom = ["convert", str(out / "tray-icon.png"), "-crop", "96x32+928+0", "+repage", "-scale", "400%"]
    subprocess.run([*zoom, str(out / "tray-icon-zoom.png")], check=False, timeout=30)

    QCursor.setPos(app.primaryScreen().geometry().right() - 12, 12)  # "click" on the docked icon
    pump(app, 0.2)
    tray.popup_menu()
    pump(app, 0.3)
    if not tray.menu.isVisible():
        print("the menu did not open", file=sys.stderr)
        return 5
    shot(app, out, "tray-menu.png")
    tray.menu.hide()

    dashboard = Dashboard(str(home / "no-engine.sock"))
    dashboard.move(30, 40)
    dashboard.show()
    dashboard.show_snapshot(EngineSnapshot([container_row(c) for c in CONTAINERS], [image_row(i) for i in IMAGES]))
    dashboard.containers.selectRow(0)
    dashboard.log_title.setText("Logs: web (following)")
    dashboard.log_view.setPlainText(
        '172.17.0.1 - - "GET / HTTP/1.1" 200 615\n172.17.0.1 - - "GET /favicon.ico HTTP/1.1" 404 153\n'
    )
    shot(app, out, "dashboard.png")
    dashboard.tabs.setCurrentIndex(1)
    shot(app, out, "dashboard-images.png")
    dashboard.close()

    dialog = ResetDialog(controller)
    dialog.move(200, 150)
    dialog.show()
    deadline = time.monotonic() + 10
    while "counts unavailable" not in dialog.summary_label.text() and time.monotonic() < deadline:
        pump(app, 0.1)
    shot(app, out, "reset-dialog-engine-down.png")
    dialog._show_preview(ResetPreview(EngineUsage.from_df(DF), None, 0, home / "keys", home / "settings.toml"))
    dialog.adjustSize()
    shot(app, out, "reset-dialog.png")
    dialog.close()
    dialog.deleteLater()
    dashboard.deleteLater()
    if not troubleshoot_shot(app, out, paths):
        return 6
    if not settings_shots(app, out, home, paths):
        return 7
    tray.dispose()
    pump(app, 0.3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
