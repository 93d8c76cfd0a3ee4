"""What a reset deletes, computed from the engine's `docker system df` answer.

The confirmation dialog must list exactly what goes away, so the counting lives here and is
tested against df() dicts; None means the engine could not be asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.tray.status_text import size_text

KEPT = "Your settings (CPUs, memory, disk size, accelerator, start options) are kept."
UNAVAILABLE = "engine not running: counts unavailable"


@dataclass(frozen=True)
class ResetSummary:
    containers: int
    running: int
    images: int
    volumes: int
    build_cache: int
    disk_bytes: int

    @classmethod
    def from_df(cls, df: dict[str, Any]) -> ResetSummary:
        containers = df.get("Containers") or []
        images = df.get("Images") or []
        volumes = df.get("Volumes") or []
        cache = df.get("BuildCache") or []
        layers = _size(df.get("LayersSize"))
        if not layers:  # older engines leave LayersSize out: fall back to unique image sizes
            layers = sum(_size(i.get("Size")) - _size(i.get("SharedSize")) for i in images)
        disk = (
            layers
            + sum(_size(c.get("SizeRw")) for c in containers)
            + sum(_size((v.get("UsageData") or {}).get("Size")) for v in volumes)
            + sum(_size(b.get("Size")) for b in cache if not b.get("Shared"))
        )
        return cls(
            containers=len(containers),
            running=sum(1 for c in containers if c.get("State") == "running"),
            images=len(images),
            volumes=len(volumes),
            build_cache=len(cache),
            disk_bytes=disk,
        )


def _size(value: Any) -> int:
    """df() reports -1 for sizes it did not compute; count those as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def deleted_lines(summary: ResetSummary | None) -> list[str]:
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


def summary_text(summary: ResetSummary | None) -> str:
    """The dialog body: what is deleted, then what is kept."""
    lines = ["Reset deletes the VM's data disk and recreates it empty. This deletes:"]
    lines += [f"  • {line}" for line in deleted_lines(summary)]
    lines += ["", KEPT, "", "This cannot be undone."]
    return "\n".join(lines)
