"""Rows for the dashboard tables, built from the engine's low-level list answers.

The formatting (ports, uptime, sizes) is pure, so it is tested without an engine or widgets;
`read_snapshot` is the one function here that asks the engine (hypervisor.engine).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.tray.status_text import size_text
from hypervisor import engine


@dataclass(frozen=True)
class ContainerRow:
    id: str
    name: str
    image: str
    state: str
    ports: str
    uptime: str

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class ImageRow:
    id: str
    tags: str
    size: str
    size_bytes: int
    created: str
    in_use: int


def format_ports(ports: list[dict[str, Any]] | None) -> str:
    """Published ports only, deduplicated over IPv4/IPv6: `8080->80/tcp, 5432->5432/tcp`."""
    seen: list[str] = []
    for p in ports or []:
        if not p.get("PublicPort"):
            continue
        ip = p.get("IP") or ""
        host = "" if ip in ("0.0.0.0", "::", "") else f"{ip}:"
        text = f"{host}{p['PublicPort']}->{p.get('PrivatePort')}/{p.get('Type', 'tcp')}"
        if text not in seen:
            seen.append(text)
    return ", ".join(seen)


def duration_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def container_row(c: dict[str, Any]) -> ContainerRow:
    """One entry of GET /containers/json?all=1; uptime is the engine's own Status text."""
    names = c.get("Names") or []
    name = names[0].lstrip("/") if names else c.get("Id", "")[:12]
    state = c.get("State") or "unknown"
    return ContainerRow(
        id=c.get("Id", ""),
        name=name,
        image=c.get("Image", ""),
        state=state,
        ports=format_ports(c.get("Ports")),
        uptime=c.get("Status", "") or state,
    )


def image_row(i: dict[str, Any], now: float | None = None) -> ImageRow:
    """One entry of GET /images/json."""
    tags = [t for t in (i.get("RepoTags") or []) if t != "<none>:<none>"]
    size = int(i.get("Size") or 0)
    created = i.get("Created")
    age = duration_text((now or time.time()) - created) + " ago" if isinstance(created, int) else ""
    return ImageRow(
        id=i.get("Id", ""),
        tags=", ".join(tags) or "<untagged> " + i.get("Id", "").removeprefix("sha256:")[:12],
        size=size_text(size),
        size_bytes=size,
        created=age,
        in_use=int(i.get("Containers") or 0) if (i.get("Containers") or 0) > 0 else 0,
    )


def prune_text(report: dict[str, Any]) -> str:
    deleted = report.get("ImagesDeleted") or []
    reclaimed = int(report.get("SpaceReclaimed") or 0)
    return f"Removed {len(deleted)} image layer(s), reclaimed {size_text(reclaimed)}."


@dataclass
class EngineSnapshot:
    containers: list[ContainerRow] = field(default_factory=list)
    images: list[ImageRow] = field(default_factory=list)


def read_snapshot(docker_socket: str | Path) -> EngineSnapshot:
    """Both tables' rows from the engine (blocking: run it off the GUI thread); EngineError if unavailable."""
    containers = sorted((container_row(c) for c in engine.containers(docker_socket)),
                        key=lambda r: (not r.running, r.name))
    images = sorted((image_row(i) for i in engine.images(docker_socket)), key=lambda r: r.tags)
    return EngineSnapshot(containers, images)
