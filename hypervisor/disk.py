"""The per-instance data disk: a sparse qcow2 made and grown with qemu-img (never shrunk)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hypervisor.errors import MachineError

GIB = 1024**3


def create_argv(qemu_img: Path, disk: Path, gib: int) -> list[str]:
    return [str(qemu_img), "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=65536",
            str(disk), f"{gib}G"]


def resize_argv(qemu_img: Path, disk: Path, gib: int) -> list[str]:
    return [str(qemu_img), "resize", "-q", str(disk), f"{gib}G"]


def info_argv(qemu_img: Path, disk: Path) -> list[str]:
    return [str(qemu_img), "info", "--output=json", "-U", str(disk)]


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MachineError(what, exc) from exc
    if proc.returncode != 0:
        raise MachineError(f"{what}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def virtual_size_gib(qemu_img: Path, disk: Path) -> int | None:
    """Size the guest sees, or None when there is no disk yet."""
    if not disk.exists():
        return None
    info = json.loads(_run(info_argv(qemu_img, disk), f"cannot read the data disk {disk}"))
    return int(info["virtual-size"]) // GIB


def allocated_bytes(qemu_img: Path, disk: Path) -> int:
    if not disk.exists():
        return 0
    info = json.loads(_run(info_argv(qemu_img, disk), f"cannot read the data disk {disk}"))
    return int(info.get("actual-size", 0))


def ensure(qemu_img: Path, disk: Path, gib: int) -> str:
    """Create the disk, or grow it to `gib`; returns what was done ("created"/"grown"/"kept")."""
    current = virtual_size_gib(qemu_img, disk)
    if current is None:
        disk.parent.mkdir(parents=True, exist_ok=True)
        _run(create_argv(qemu_img, disk, gib), f"cannot create the data disk {disk}")
        disk.chmod(0o600)
        return "created"
    if gib > current:
        _run(resize_argv(qemu_img, disk, gib), f"cannot grow the data disk {disk}")
        return "grown"
    return "kept"
