"""The reset confirmation's text: what goes away, as hypervisor.operations.reset_preview counts it
(the same EngineUsage `pinnace reset` prints); None means the engine could not be asked.
"""

from __future__ import annotations

from app.tray.status_text import size_text
from hypervisor.engine import EngineUsage

KEPT = "Your settings (CPUs, memory, disk size, accelerator, start options) are kept."
UNAVAILABLE = "engine not running: counts unavailable"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def deleted_lines(summary: EngineUsage | None) -> list[str]:
    if summary is None:
        return [
            "The VM's data disk: every container, image, volume and build cache entry",
            f"({UNAVAILABLE})",
        ]
    containers = _plural(summary.containers, "container")
    if summary.running:
        containers += f" ({summary.running} running)"
    return [
        containers,
        _plural(summary.images, "image"),
        _plural(summary.volumes, "volume"),
        _plural(summary.build_cache, "build cache entry").replace("entrys", "entries"),
        f"{size_text(summary.disk_bytes)} of disk usage",
    ]


def summary_text(summary: EngineUsage | None) -> str:
    """The dialog body: what is deleted, then what is kept."""
    lines = ["Reset deletes the VM's data disk and recreates it empty. This deletes:"]
    lines += [f"  • {line}" for line in deleted_lines(summary)]
    lines += ["", KEPT, "", "This cannot be undone."]
    return "\n".join(lines)
