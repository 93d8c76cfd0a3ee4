"""Small builders shared by the tray tests."""

from __future__ import annotations

import sys

from hypervisor.control import Status

_SPARE: list[tuple[object, ...]] = []


def hold_spare_references(count: int = 500_000) -> None:
    """PySide6 6.12.0 (abi3 wheels) hands back None from void methods (click(), setEnabled()…) and
    True from Signal.emit() without a new reference: harmless where those objects are immortal
    (Python >= 3.12), but on 3.11 each call takes one reference away, and a process that makes a
    few thousand such calls dies with "Fatal Python error: bool_dealloc / none_dealloc" (exit 134),
    at the latest when the interpreter finalizes. Spare references keep test processes alive; they
    do not fix the app."""
    if sys.version_info < (3, 12) and not _SPARE:
        _SPARE.append((None, True, False) * count)


def running_status(**overrides: object) -> Status:
    values: dict[str, object] = dict(
        instance="default",
        state="running",
        accel="kvm",
        accel_reason="KVM: probe booted in 0.4 s",
        cpus=2,
        memory_mib=4096,
        disk_gib=64,
        engine_version="26.1.3",
        docker_socket="/run/user/1000/pinnace/default/docker.sock",
    )
    values.update(overrides)
    return Status(**values)  # type: ignore[arg-type]
