"""Every state has an icon in every variant, and each file is a well-formed SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from app.tray.icon_files import ICON_STATES, VARIANTS, app_icon_file, icon_file, icons_dir, variant_for

SVG_NS = "{http://www.w3.org/2000/svg}"
ALL = [icon_file(s, v) for s in ICON_STATES for v in VARIANTS] + [app_icon_file()]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_icon_is_valid_svg(path: Path) -> None:
    assert path.is_file(), path
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG_NS}svg"
    assert root.get("viewBox") == "0 0 32 32"


def test_template_variant_is_monochrome() -> None:
    for state in ICON_STATES:
        text = icon_file(state, "template").read_text()
        colours = {c.lower() for c in __import__("re").findall(r"#[0-9a-fA-F]{6}", text)}
        assert colours <= {"#000000"}, (state, colours)


def test_variant_choice() -> None:
    assert variant_for("darwin", dark_theme=True) == "template"
    assert variant_for("linux", dark_theme=True) == "dark"
    assert variant_for("windows", dark_theme=False) == "light"
    with pytest.raises(ValueError):
        icon_file("sleeping", "light")


def test_icons_render_with_qt(qapp) -> None:  # noqa: ANN001 - pytest-qt
    from app.tray.icons import state_icon

    for state in ICON_STATES:
        icon = state_icon(state, "linux", dark=False)
        assert not icon.isNull()
        assert icon.pixmap(22, 22).toImage().pixelColor(11, 17).alpha() > 0  # the hull is drawn
        assert icon.pixmap(22, 22).toImage().pixelColor(1, 1).alpha() == 0  # transparent corner
    assert state_icon("running", "darwin").isMask()


def test_desktop_file() -> None:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(icons_dir().parent / "pinnace.desktop")
    entry = parser["Desktop Entry"]
    assert entry["Exec"] == "pinnace-tray" and entry["Icon"] == "pinnace" and entry["Type"] == "Application"
