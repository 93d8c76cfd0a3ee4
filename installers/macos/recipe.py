"""What the macOS build generates: Info.plist, the QEMU entitlements, the LaunchAgent, the iconset.

Pure functions (stdlib, plus app.autostart for the LaunchAgent), so the content is unit-tested on
any host; `pinnace.spec` and `build.py` hand them to PyInstaller, iconutil, codesign and hdiutil
on a Mac.
"""

from __future__ import annotations

import json
import plistlib
import re
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # installers/: shared.py
from shared import project_version  # noqa: E402, F401 - the spec and build.py read it from here

ROOT = Path(__file__).resolve().parents[2]

APP_NAME = "Pinnace"
BUNDLE_ID = "dev.pinnace.Pinnace"
# The executables are named after the console scripts: app.autostart.tray_command() looks for
# `pinnace-tray` beside sys.executable, so the login-start entry it writes from inside the bundle
# names Contents/MacOS/pinnace-tray, the same as `launch_agent()` below.
TRAY_EXE = "pinnace-tray"
CLI_EXE = "pinnace"
ICON_FILE = "pinnace.icns"
INSTALL_DIR = "/Applications"
# Both guest images ship in every bundle: the host's arch boots under HVF, the other under TCG
# (PINNACE_ARCH). Relative to sys._MEIPASS (Contents/Frameworks); PyInstaller moves data files to
# Contents/Resources/images and links Contents/Frameworks/images to it, which is where
# vmimage.locations.bundled_image_roots() looks.
IMAGE_ARCHES = ("aarch64", "x86_64")
IMAGES_DEST = "images"

HYPERVISOR_ENTITLEMENT = "com.apple.security.hypervisor"
JIT_ENTITLEMENT = "com.apple.security.cs.allow-jit"


def bundle_version(version: str) -> str:
    """CFBundleShortVersionString allows at most three integers: the release part of a PEP 440 version."""
    match = re.match(r"\d+(?:\.\d+){0,2}", version)
    if not match:
        raise ValueError(f"version {version!r} does not start with a release number")
    return match.group(0)


def min_macos_from_wheel_tags(tags: Iterable[str]) -> str | None:
    """The newest `macosx_X_Y` among wheel tags (e.g. PySide6's): the oldest macOS the bundle runs on."""
    found = [
        (int(m.group(1)), int(m.group(2)))
        for tag in tags
        if (m := re.search(r"macosx_(\d+)_(\d+)_", tag))
    ]
    if not found:
        return None
    major, minor = max(found)
    return f"{major}.{minor}"


def info_plist(version: str, min_macos: str | None = None) -> dict[str, object]:
    """Keys PyInstaller's BUNDLE merges over its defaults (ours win)."""
    release = bundle_version(version)
    plist: dict[str, object] = {
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleExecutable": TRAY_EXE,
        "CFBundleIconFile": ICON_FILE,
        "CFBundlePackageType": "APPL",
        "CFBundleInfoDictionaryVersion": "6.0",
        "CFBundleShortVersionString": release,
        "CFBundleVersion": release,
        # Menu-bar only: no Dock icon, no app menu.
        "LSUIElement": True,
        # PyInstaller sets LSBackgroundOnly (no UI at all) when the last EXE in the bundle is a
        # console program, and the CLI is one; a background-only app could not show its status item.
        "LSBackgroundOnly": False,
        "LSApplicationCategoryType": "public.app-category.developer-tools",
        "NSHighResolutionCapable": True,
        "NSPrincipalClass": "NSApplication",
    }
    if min_macos:
        plist["LSMinimumSystemVersion"] = min_macos
    return plist


def qemu_entitlements() -> dict[str, bool]:
    """For a QEMU the packager signs (a self-built or bundled one; Homebrew's is already signed).

    hypervisor: without it `-accel hvf` fails with HV_DENIED. allow-jit: under the hardened
    runtime (needed for notarisation) TCG's code buffer is a MAP_JIT mapping, and TCG runs the
    other architecture's image and every HVF fallback.
    """
    return {HYPERVISOR_ENTITLEMENT: True, JIT_ENTITLEMENT: True}


def plist_bytes(content: dict[str, object]) -> bytes:
    return plistlib.dumps(content, sort_keys=True)


def tray_argv(app_path: str = f"{INSTALL_DIR}/{APP_NAME}.app") -> list[str]:
    """How the installed tray is started: the bundle's executable, no arguments."""
    return [f"{app_path}/Contents/MacOS/{TRAY_EXE}"]


def launch_agent(app_path: str = f"{INSTALL_DIR}/{APP_NAME}.app") -> bytes:
    """~/Library/LaunchAgents/dev.pinnace.tray.plist, byte for byte what the tray's "Start at
    login" writes, so the toggle and the installer agree on the file."""
    from app.autostart import launch_agent_plist  # the one source of the format

    return launch_agent_plist(tray_argv(app_path))


def launch_agent_file_name() -> str:
    from app.autostart import launch_agent_label

    return f"{launch_agent_label('default')}.plist"


def iconset_sizes() -> dict[str, int]:
    """`iconutil -c icns` input: file name in the .iconset -> pixel size."""
    sizes: dict[str, int] = {}
    for points in (16, 32, 128, 256, 512):
        sizes[f"icon_{points}x{points}.png"] = points
        sizes[f"icon_{points}x{points}@2x.png"] = points * 2
    return sizes


def image_files(image_dir: Path) -> list[str]:
    """The files of a built image that boot needs: manifest.json and the artifacts it lists."""
    manifest = json.loads((image_dir / "manifest.json").read_text())
    return ["manifest.json", *sorted(a["file"] for a in manifest["artifacts"].values())]
