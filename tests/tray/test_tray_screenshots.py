"""Screenshots under Xvfb with a real tray host (trayer): the icon docks, the menu opens, the
dashboard, reset dialog, Troubleshoot window and every Settings tab render (the settings load from
files, a refused engine.json key shows its error, the fixed one saves). PNGs land in
artifacts/screenshots/ for a human to look at."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.tray.settings_dialog import ERROR_STYLE
from app.tray.troubleshoot_model import COLOURS

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "artifacts" / "screenshots"
TOOLS = ("Xvfb", "trayer", "import")
SHOTS = ("tray-icon.png", "tray-menu.png", "dashboard.png", "dashboard-images.png", "reset-dialog.png",
         "troubleshoot.png", "settings-general.png", "settings-sharing.png", "settings-network.png",
         "settings-certificates.png", "settings-engine.png", "settings-engine-error.png")
# Below trayer's bar (whose icon has colours of its own): where the windows are.
WINDOWS_AREA = "1024x640+0+40"
ERROR_RED = ERROR_STYLE.split(":", 1)[1].strip(" ;")  # the inline error labels' colour

pytestmark = [
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason="needs Xvfb, trayer and ImageMagick's import (apt-get install xvfb trayer imagemagick)",
    ),
    pytest.mark.timeout(240),
]


def _free_display() -> int:
    for n in range(90, 140):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    pytest.skip("no free X display number")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def display() -> Iterator[dict[str, str]]:
    n = _free_display()
    xvfb = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1024x700x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "WAYLAND"))}
    env.update(DISPLAY=f":{n}", QT_QPA_PLATFORM="xcb")
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if xvfb.poll() is not None or time.monotonic() > deadline:
            _stop(xvfb)
            pytest.skip(f"Xvfb :{n} did not start")
        time.sleep(0.1)
    trayer = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "24",
         "--transparent", "false", "--tint", "0xd8d8d8"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield env
    finally:
        _stop(trayer)
        _stop(xvfb)


def test_screenshots(display: dict[str, str], tmp_path: Path) -> None:
    for name in SHOTS:
        (OUT / name).unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.tray.screenshot_app", str(OUT), str(tmp_path / "home")],
        cwd=ROOT, env=display, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"screenshot app failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    for name in SHOTS:
        path = OUT / name
        assert path.is_file() and path.stat().st_size > 1000, name
    for outcome in ("pass", "warn", "fail"):  # the coloured marks were drawn, in their colours
        assert _pixels_near(OUT / "troubleshoot.png", COLOURS[outcome]) > 20, f"no {outcome} mark drawn"
    assert _pixels_near(OUT / "settings-engine-error.png", ERROR_RED) > 20, "no engine.json error drawn"
    assert _pixels_near(OUT / "settings-engine.png", ERROR_RED) < 5, "an error on valid engine settings"


def _pixels_near(png: Path, colour: str) -> int:
    """How many pixels of the windows' area are within a few percent of `colour` (ImageMagick)."""
    proc = subprocess.run(
        ["convert", str(png), "-crop", WINDOWS_AREA, "+repage", "-alpha", "off", "-fuzz", "6%",
         "-fill", "black", "+opaque", colour, "-fill", "white", "-opaque", colour,
         "-colorspace", "gray", "-format", "%[fx:round(mean*w*h)]", "info:"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return int(proc.stdout.strip())
