"""Reading the guest's progress from its serial console log.

The guest's init prints `PINNACE-STAGE <name> <uptime>`, `PINNACE-READY <uptime>` and
`PINNACE-FAILED <reason>` lines; everything else is ordinary console output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STAGE_LABELS = {
    "kernel": "booting kernel",
    "init": "mounting the root image",
    "data": "mounting the data disk",
    "engine": "starting the engine",
    "ready": "engine ready",
    "stopping": "stopping",
}


@dataclass(frozen=True)
class BootEvent:
    kind: str  # "stage" | "ready" | "failed"
    value: str
    uptime: float | None = None


def parse_line(line: str) -> BootEvent | None:
    # Control bytes may precede a line on the serial console (NULs and a SYN were seen before a
    # PINNACE-READY under TCG): they separate words like blanks, never hide a stage line.
    parts = "".join(ch if ch.isprintable() else " " for ch in line).split()
    if not parts:
        return None
    try:
        if parts[0] == "PINNACE-STAGE" and len(parts) >= 2:
            return BootEvent("stage", parts[1], float(parts[2]) if len(parts) > 2 else None)
        if parts[0] == "PINNACE-READY":
            return BootEvent("ready", "ready", float(parts[1]) if len(parts) > 1 else None)
    except ValueError:
        return None
    if parts[0] == "PINNACE-FAILED":
        return BootEvent("failed", " ".join(parts[1:]) or "the guest reported a failure")
    return None


class SerialTail:
    """Follows a growing log file from a starting offset, yielding complete lines."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path, self.offset, self._partial = path, offset, b""

    @staticmethod
    def end_of(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [ln.decode(errors="replace").rstrip("\r") for ln in lines]

    def events(self) -> list[BootEvent]:
        return [e for e in map(parse_line, self.read_lines()) if e is not None]


def last_lines(path: Path, count: int = 5, window: int = 8192) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - window))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [ln.strip() for ln in text.splitlines() if ln.strip()][-count:]


_KERNEL_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")


def kernel_panic(lines: list[str]) -> str:
    """The kernel's panic message among console lines ("Kernel panic - not syncing: …"), or ''."""
    for line in lines:
        if "Kernel panic" in line:
            return _KERNEL_TIME.sub("", line).strip()
    return ""
