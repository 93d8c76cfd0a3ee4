"""Draw the app's SVG icon as PNG at a size, for the macOS .icns and the Windows .ico (Qt's SVG
renderer is already a dependency of the tray). Shared by installers/macos and installers/windows."""

from __future__ import annotations

from pathlib import Path


def render_png(svg: Path, size: int) -> bytes:
    """The SVG drawn at size x size on a transparent background."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(0)
    painter = QPainter(image)
    QSvgRenderer(str(svg)).render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data.data())
