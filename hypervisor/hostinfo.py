"""Small, read-only facts about the host (OS, CPU, memory) shared by the machine layer.

Kept separate so the pure modules can take these facts as parameters and tests can fake them.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Mapping

from hypervisor import platform as host_platform
from hypervisor.errors import SettingsError

log = logging.getLogger(__name__)

HOST_OSES = ("linux", "darwin", "windows")
GUEST_ARCHES = ("x86_64", "aarch64")
ARCH_ENV = "PINNACE_ARCH"


def host_os(plat: str | None = None) -> str:
    """"linux", "darwin" or "windows" (other Unixes pass through): this host's, or `plat`'s (a
    `sys.platform` value). The host's comes from the platform strategy, chosen once."""
    return host_platform.current().os_name if plat is None else host_platform.normalise_os(plat)


def host_arch(machine: str | None = None) -> str:
    """Normalise `platform.machine()` to the QEMU guest arch names "x86_64" or "aarch64"."""
    machine = (platform.machine() if machine is None else machine).lower()
    if machine in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if machine in ("arm64", "aarch64", "armv8", "armv8l"):
        return "aarch64"
    return machine


def guest_arch(env: Mapping[str, str] | None = None, machine: str | None = None) -> str:
    """The guest's architecture: the host's, unless PINNACE_ARCH asks for the other one (then the
    guest runs under TCG, e.g. an aarch64 guest on an x86_64 host for testing the arm64 image)."""
    env = os.environ if env is None else env
    wanted = env.get(ARCH_ENV, "").strip()
    if not wanted:
        return host_arch(machine)
    arch = host_arch(wanted)
    if arch not in GUEST_ARCHES:
        raise SettingsError(f"{ARCH_ENV}={wanted!r}: unsupported guest architecture (expected x86_64 or aarch64)")
    return arch


def cpu_count() -> int:
    """CPUs this process may use (honours affinity masks / cgroup cpusets where Python exposes them)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def total_memory_mib() -> int:
    """Physical memory in MiB; 0 if it cannot be determined (callers treat 0 as "unknown")."""
    try:
        return host_platform.current().total_memory_mib()
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.warning("could not determine host memory: %s", exc)
        return 0


def current_uid() -> int | None:
    """The numeric user id on POSIX hosts, None on Windows."""
    getuid = getattr(os, "getuid", None)
    return getuid() if getuid is not None else None
