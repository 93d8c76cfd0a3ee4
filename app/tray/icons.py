"""QIcons for the tray states, rendered from the SVGs with QSvgRenderer.

Rendering ourselves (instead of QIcon(path)) avoids depending on Qt's SVG icon-engine plugin,
which minimal PySide6 installs may lack.
"""

from __future__ import annotations

import logging
from functools import cache

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QGuiApplication, QIcon, QImage, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

from app.tray.icon_files import app_icon_file, icon_file, variant_for

log = logging.getLogger(__name__)

SIZES = (16, 22, 24, 32, 44, 48, 64)


def dark_theme() -> bool:
    hints = QGuiApplication.styleHints()
    return hints is not None and hints.colorScheme() == Qt.ColorScheme.Dark


@cache
def _svg_icon(path: str) -> QIcon:
    renderer = QSvgRenderer(path)
    icon = QIcon()
    if not renderer.isValid():
        log.warning("cannot render icon %s", path)
        return icon
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        icon.addPixmap(QPixmap.fromImage(image))
    return icon


def state_icon(state: str, host_os: str, dark: bool | None = None) -> QIcon:
    variant = variant_for(host_os, dark_theme() if dark is None else dark)
    icon = QIcon(_svg_icon(str(icon_file(state, variant))))
    if variant == "template":
        icon.setIsMask(True)  # macOS tints masks to match the menu bar
    return icon


def app_icon() -> QIcon:
    return _svg_icon(str(app_icon_file()))
