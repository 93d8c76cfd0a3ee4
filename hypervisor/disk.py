"""The per-instance data disk: a sparse qcow2 made and grown with qemu-img (never shrunk)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from hypervisor import platform as host_platform
from hypervisor.errors import MachineError
from hypervisor.qemu_binary import find_qemu_img

log = logging.getLogger(__name__)

GIB = 1024**3


def create_argv(qemu_img: Path, disk: Path, gib: int) -> list[str]:
    return [str(qemu_img), "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=65536",
            str(disk), f"{gib}G"]


def resize_argv(qemu_img: Path, disk: Path, gib: int) -> list[str]:
    return [str(qemu_img), "resize", "-q", str(disk), f"{gib}G"]


def info_argv(qemu_img: Path, disk: Path) -> list[str]:
    return [str(qemu_img), "info", "--output=json", "-U", str(disk)]


def map_argv(qemu_img: Path, disk: Path) -> list[str]:
    return [str(qemu_img), "map", "--output=json", "-U", str(disk)]


def is_blank(qemu_img: Path, disk: Path) -> bool:
    """Whether the guest never wrote to `disk` (no data cluster allocated): a first boot that died
    before formatting it. Only a blank disk may be formatted; anything else is the user's data."""
    if not disk.exists():
        return True
    extents = json.loads(_run(map_argv(qemu_img, disk), f"cannot read the data disk {disk}"))
    return not any(extent.get("data") for extent in extents)


def lock_check_argv(qemu_img: Path, disk: Path) -> list[str]:
    """Without -U: qemu-img then takes the image's lock, which a running QEMU holds."""
    return [str(qemu_img), "info", "--output=json", str(disk)]


def in_use(qemu_img: Path, disk: Path) -> str | None:
    """Why `disk` is in use by a QEMU (it holds the image's lock, whoever started it), or None.

    Asked before anything deletes or replaces the disk: pid files and sockets can be wiped (a
    logout empties the runtime dir) while QEMU still writes the disk; the lock cannot.
    """
    if not disk.exists():
        return None
    try:
        proc = subprocess.run(lock_check_argv(qemu_img, disk), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot tell whether {disk} is in use: {exc}"
    if proc.returncode == 0:
        return None
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    return f"{disk} is in use by a running VM" + (f" ({detail[0]})" if detail else "")


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
        host_platform.current().restrict(disk)  # the guest's data: owner-only
        return "created"
    if gib > current:
        _run(resize_argv(qemu_img, disk, gib), f"cannot grow the data disk {disk}")
        return "grown"
    return "kept"


def delete_instance_data(disk: Path, keys_dir: Path, qemu_img: Path | None = None) -> None:
    """What a reset deletes (the data disk and the instance's keys), only when no QEMU holds the
    disk: MachineError naming it otherwise, and nothing is deleted."""
    if qemu_img is None:
        qemu_img = find_qemu_img(host_platform.current().os_name, os.environ, shutil.which, Path.is_file)
    busy = in_use(qemu_img, disk)
    if busy:
        raise MachineError(f"not resetting: {busy}; stop it first (`pinnace stop`)")
    disk.unlink(missing_ok=True)
    shutil.rmtree(keys_dir, ignore_errors=True)
    log.info("reset: deleted %s and %s", disk, keys_dir)
