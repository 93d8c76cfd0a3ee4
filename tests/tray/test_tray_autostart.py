"""Start-at-login entries for every OS, built and checked on any OS."""

from __future__ import annotations

import configparser
import plistlib
from pathlib import Path

from app.autostart import (
    Autostart,
    desktop_entry,
    launch_agent_plist,
    run_value,
    run_value_name,
    tray_command,
)

ARGV = ["/opt/pinnace venv/bin/python", "-m", "app.tray_main"]


def test_desktop_entry_is_valid_and_quotes_exec() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(desktop_entry(ARGV))
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Name"] == "Pinnace"
    assert entry["Exec"] == '"/opt/pinnace venv/bin/python" -m app.tray_main'
    assert entry["X-GNOME-Autostart-enabled"] == "true"
    assert "Exec=a \"b\\$c\"" in desktop_entry(["a", "b$c"])


def test_launch_agent_plist() -> None:
    data = plistlib.loads(launch_agent_plist(ARGV))
    assert data["Label"] == "dev.pinnace.tray"
    assert data["ProgramArguments"] == ARGV
    assert data["RunAtLoad"] is True and data["KeepAlive"] is False
    assert plistlib.loads(launch_agent_plist(ARGV, "dev"))["Label"] == "dev.pinnace.tray.dev"


def test_windows_run_value() -> None:
    assert run_value([r"C:\Program Files\Pinnace\pinnace-tray.exe"]) == (
        r'"C:\Program Files\Pinnace\pinnace-tray.exe"'
    )
    assert run_value_name("default") == "Pinnace"
    assert run_value_name("dev") == "Pinnace (dev)"


def test_locations(tmp_path: Path) -> None:
    assert Autostart("linux", tmp_path).file == tmp_path / ".config/autostart/pinnace.desktop"
    assert Autostart("darwin", tmp_path).file == tmp_path / "Library/LaunchAgents/dev.pinnace.tray.plist"
    assert Autostart("windows", tmp_path).file is None
    assert Autostart("linux", tmp_path, "dev").file == tmp_path / ".config/autostart/pinnace-dev.desktop"


def test_enable_disable_files(tmp_path: Path) -> None:
    for os_name in ("linux", "darwin"):
        entry = Autostart(os_name, tmp_path)
        assert not entry.is_enabled()
        entry.apply(True)
        assert entry.is_enabled()
        assert entry.file is not None and entry.file.read_bytes() == entry.content(tray_command())
        entry.apply(False)
        assert not entry.is_enabled()
        entry.disable()  # idempotent


def test_tray_command_names_instance() -> None:
    argv = tray_command("dev", python="/nonexistent/bin/python3")
    assert argv == ["/nonexistent/bin/python3", "-m", "app.tray_main", "--name", "dev"]
