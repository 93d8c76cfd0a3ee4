"""Where the tray's SVG icons live and which file fits a state on this desktop.

`resources/` sits at the repository root; PINNACE_RESOURCES overrides it for installed layouts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

RESOURCES_ENV = "PINNACE_RESOURCES"
ICON_STATES = ("stopped", "starting", "starting-alt", "running", "paused", "error")
VARIANTS = ("light", "dark", "template")


def resources_dir() -> Path:
    """PINNACE_RESOURCES, else the source tree's resources/, else the installed data files."""
    override = os.environ.get(RESOURCES_ENV, "").strip()
    if override:
        return Path(override)
    source_tree = Path(__file__).resolve().parents[2] / "resources"
    if source_tree.is_dir():
        return source_tree
    return Path(sys.prefix) / "share" / "pinnace" / "resources"


def icons_dir() -> Path:
    return resources_dir() / "icons"


def variant_for(host_os: str, dark_theme: bool) -> str:
    """macOS tints template images itself; elsewhere pick the ink that contrasts with the panel."""
    if host_os == "darwin":
        return "template"
    return "dark" if dark_theme else "light"


def icon_file(state: str, variant: str) -> Path:
    if state not in ICON_STATES:
        raise ValueError(f"unknown icon state {state!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown icon variant {variant!r}")
    return icons_dir() / f"pinnace-{state}-{variant}.svg"


def app_icon_file() -> Path:
    return icons_dir() / "pinnace.svg"
