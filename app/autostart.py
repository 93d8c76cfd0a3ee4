"""Start the tray at login: XDG autostart (Linux), a LaunchAgent (macOS), the Run key (Windows).

The file/value contents are built by pure functions (tested for every OS on any OS); only
`enable`/`disable` touch the filesystem or registry, and winreg is imported only on Windows.
"""

from __future__ import annotations

import logging
import plistlib
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hypervisor.hostinfo import host_os as detect_host_os

log = logging.getLogger(__name__)

LAUNCH_AGENT_LABEL = "dev.pinnace.tray"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "Pinnace"


def tray_command(instance: str = "default", python: str | None = None) -> list[str]:
    """argv that starts this tray: the installed `pinnace-tray` script beside this interpreter,
    else the same interpreter running the module (a source checkout)."""
    python = python or sys.executable
    script = Path(python).with_name("pinnace-tray.exe" if sys.platform == "win32" else "pinnace-tray")
    argv = [str(script)] if script.exists() else [python, "-m", "app.tray_main"]
    if instance != "default":
        argv += ["--name", instance]
    return argv


def _desktop_exec(argv: Sequence[str]) -> str:
    """Quote per the Desktop Entry spec: double quotes, with `"`, backtick, `$` and `\\` escaped."""
    out = []
    for arg in argv:
        if arg and all(c.isalnum() or c in "-_./=:+," for c in arg):
            out.append(arg)
            continue
        escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
        out.append(f'"{escaped}"')
    return " ".join(out).replace("%", "%%")


def desktop_entry(argv: Sequence[str], instance: str = "default") -> str:
    """XDG autostart entry (`~/.config/autostart/pinnace.desktop`)."""
    suffix = "" if instance == "default" else f" ({instance})"
    return "\n".join(
        [
            "[Desktop Entry]",
            "Type=Application",
            f"Name=Pinnace{suffix}",
            "Comment=Docker engine in a small VM",
            f"Exec={_desktop_exec(argv)}",
            "Icon=pinnace",
            "Terminal=false",
            "Categories=Development;",
            "X-GNOME-Autostart-enabled=true",
            "",
        ]
    )


def launch_agent_plist(argv: Sequence[str], instance: str = "default") -> bytes:
    """LaunchAgent plist: run once at load (login), never keep-alive (Quit must stay quit)."""
    label = launch_agent_label(instance)
    return plistlib.dumps(
        {
            "Label": label,
            "ProgramArguments": list(argv),
            "RunAtLoad": True,
            "KeepAlive": False,
            "ProcessType": "Interactive",
            "LimitLoadToSessionType": "Aqua",
        }
    )


def launch_agent_label(instance: str) -> str:
    return LAUNCH_AGENT_LABEL if instance == "default" else f"{LAUNCH_AGENT_LABEL}.{instance}"


def run_value(argv: Sequence[str]) -> str:
    """The HKCU Run value: a Windows command line (CreateProcess quoting)."""
    return subprocess.list2cmdline(list(argv))


def run_value_name(instance: str) -> str:
    return RUN_VALUE if instance == "default" else f"{RUN_VALUE} ({instance})"


@dataclass(frozen=True)
class Autostart:
    """Where this user's autostart entry for one instance lives on `os_name`."""

    os_name: str
    home: Path
    instance: str = "default"

    @classmethod
    def for_host(cls, instance: str = "default") -> Autostart:
        return cls(os_name=detect_host_os(), home=Path.home(), instance=instance)

    @property
    def file(self) -> Path | None:
        """The entry's file; None on Windows, where it is a registry value."""
        if self.os_name == "darwin":
            return self.home / "Library" / "LaunchAgents" / f"{launch_agent_label(self.instance)}.plist"
        if self.os_name == "windows":
            return None
        name = "pinnace.desktop" if self.instance == "default" else f"pinnace-{self.instance}.desktop"
        return self.home / ".config" / "autostart" / name

    def content(self, argv: Sequence[str]) -> bytes:
        if self.os_name == "darwin":
            return launch_agent_plist(argv, self.instance)
        if self.os_name == "windows":
            return run_value(argv).encode()
        return desktop_entry(argv, self.instance).encode()

    def is_enabled(self) -> bool:
        if self.os_name == "windows":
            return _read_run_value(run_value_name(self.instance)) is not None
        path = self.file
        return path is not None and path.exists()

    def enable(self, argv: Sequence[str] | None = None) -> None:
        argv = list(argv or tray_command(self.instance))
        if self.os_name == "windows":
            _write_run_value(run_value_name(self.instance), run_value(argv))
            log.info("autostart enabled in HKCU\\%s", RUN_KEY)
            return
        path = self.file
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.content(argv))
        log.info("autostart enabled: %s", path)

    def disable(self) -> None:
        if self.os_name == "windows":
            _delete_run_value(run_value_name(self.instance))
            return
        path = self.file
        if path is not None and path.exists():
            path.unlink()
            log.info("autostart disabled: removed %s", path)

    def apply(self, enabled: bool) -> None:
        """Make the entry match the `start_at_login` setting."""
        if enabled:
            self.enable()
        else:
            self.disable()


def describe(argv: Sequence[str]) -> str:
    """Shell-quoted command for logs and messages."""
    return shlex.join(argv)


# --- Windows registry (imported lazily: winreg exists only there) ----------------------------


def _read_run_value(name: str) -> str | None:
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
            value, _ = winreg.QueryValueEx(key, name)
            return str(value)
    except OSError:
        return None


def _write_run_value(name: str, command: str) -> None:
    import winreg

    with winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
        winreg.SetValueEx(key, name, 0, winreg.REG_SZ, command)


def _delete_run_value(name: str) -> None:
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
            winreg.DeleteValue(key, name)
    except FileNotFoundError:
        pass
