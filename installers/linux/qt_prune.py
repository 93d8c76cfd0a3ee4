"""Trim a PySide6-Essentials install to what the tray loads: the wheel is ~250 MB, the tray needs
QtCore/QtGui/QtWidgets/QtNetwork/QtSvg, the desktop platform plugins, and the Qt libraries those
link against (resolved from the ELF files, not guessed). Everything else (QML, Quick, Designer,
translations, headers, tools, type stubs) is removed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from vmimage import elf

log = logging.getLogger(__name__)

# Python bindings the app imports (grep `from PySide6.` in app/), plus QtDBus which libQt6Gui links.
KEEP_MODULES = ("QtCore", "QtGui", "QtWidgets", "QtNetwork", "QtSvg", "QtDBus")
# Plugins Qt dlopens for a tray on a Linux desktop: X11 and Wayland panels (and offscreen for
# tests), SVG icons, compose/IBus input, desktop themes. Not: virtual keyboard (pulls Qt Quick),
# PDF/TIFF/WebP readers, compositor-side Wayland plugins, embedded framebuffers.
KEEP_PLUGINS = {
    "platforms": ("libqxcb.so", "libqwayland.so", "libqoffscreen.so", "libqminimal.so"),
    "platformthemes": ("libqgtk3.so", "libqxdgdesktopportal.so"),
    "platforminputcontexts": ("libcomposeplatforminputcontextplugin.so", "libibusplatforminputcontextplugin.so"),
    "iconengines": ("libqsvgicon.so",),
    "imageformats": ("libqsvg.so", "libqico.so"),
    "xcbglintegrations": ("libqxcb-egl-integration.so", "libqxcb-glx-integration.so"),
    "wayland-shell-integration": ("libxdg-shell.so",),
    "wayland-decoration-client": ("libadwaita.so", "libbradient.so"),
    "wayland-graphics-integration-client": ("libqt-plugin-wayland-egl.so",),
}
DROP_TOP = ("qml", "translations", "metatypes", "include", "libexec", "resources/qtwebengine")
DROP_PACKAGE_ENTRIES = ("assistant", "designer", "linguist", "lrelease", "lupdate", "qmlformat", "qmllint", "qmlls",
                        "svgtoqml", "doc", "glue", "include", "typesystems", "scripts")


def prune(site: Path) -> int:
    """Prune <site>/PySide6 in place; returns the bytes removed."""
    pyside = site / "PySide6"
    qt = pyside / "Qt"
    before = tree_size(site)
    for entry in DROP_PACKAGE_ENTRIES:
        remove(pyside / entry)
    for top in DROP_TOP:
        remove(qt / top)
    for binding in pyside.glob("Qt*.abi3.so"):
        if binding.name.split(".")[0] not in KEEP_MODULES:
            binding.unlink()
    for stub in pyside.glob("*.pyi"):
        stub.unlink()
    remove(pyside / "libpyside6qml.abi3.so.6.12")
    for qml_lib in pyside.glob("libpyside6qml*"):
        qml_lib.unlink()
    plugins = qt / "plugins"
    for plugin in list(plugins.rglob("*")) if plugins.is_dir() else []:
        if plugin.is_file() and plugin.name not in KEEP_PLUGINS.get(plugin.parent.name, ()):
            plugin.unlink()
    for plugin_dir in list(plugins.iterdir()) if plugins.is_dir() else []:
        if plugin_dir.name not in KEEP_PLUGINS:
            remove(plugin_dir)
    keep_qt_libraries(qt / "lib", roots=[*pyside.glob("*.so*"), *site.glob("shiboken6/*.so*"), *plugins.rglob("*.so")])
    removed = before - tree_size(site)
    log.info("pruned PySide6: %.1f MiB removed", removed / 2**20)
    return removed


def keep_qt_libraries(lib_dir: Path, roots: Iterable[Path]) -> None:
    """Delete every library in lib_dir that no root needs, directly or through another library."""
    available = {p.name: p for p in lib_dir.iterdir() if p.is_file() or p.is_symlink()}
    needed: set[str] = set()
    queue = [p for p in roots if p.is_file()]
    while queue:
        for name in elf.read_elf(queue.pop().read_bytes()).needed:
            if name in available and name not in needed:
                needed.add(name)
                queue.append(available[name].resolve())
    for name, path in available.items():
        if name not in needed and not any(name.startswith(n.split(".so")[0] + ".so") for n in needed):
            path.unlink()


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
