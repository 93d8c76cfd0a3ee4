"""Host folders shared into the guest at the same absolute path, so `docker run -v "$PWD":/src`
works unchanged: pure planning (settings -> shares), the QEMU argv for them, the fw_cfg text the
guest's boot script reads, and the hint for bind mounts outside every share.

Transport: virtio-9p (`-fsdev local,security_model=none` + `virtio-9p-pci`). QEMU runs as the
host user, so files a container writes belong to that user and modes round-trip. The guest
mounts each share with `trans=virtio,version=9p2000.L,msize=512000,cache=mmap` (vmimage/guest/boot):
msize is the largest the guest kernel's virtio transport accepts; cache=mmap was chosen by
measurement (tests/benchmarks/bench_ports_mounts.py): it keeps metadata uncached, so a file
changed on the host is seen at once, and still allows shared writable mmap (sqlite, etc.).

virtiofs (virtiofsd + a shared-memory backend) is faster on metadata but needs a second daemon
per share and `memory-backend-memfd`; QEMU has neither 9p nor virtiofs on Windows hosts, where
no share is set up (see `supported`).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor.settings import Share

log = logging.getLogger("pinnace.mounts")

TAG_PREFIX = "pinnace"
FW_CFG_NAME = "opt/pinnace/shares"

# Guest paths a share must never cover: the guest's own system (a share on / or /usr would hide it).
GUEST_RESERVED = ("/", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc", "/var", "/var/lib",
                  "/var/lib/docker", "/var/lib/containerd", "/var/run", "/run", "/proc", "/sys",
                  "/dev", "/data", "/tmp")


@dataclass(frozen=True)
class GuestShare:
    """One share as QEMU and the guest see it: the 9p mount tag, the path (same on both sides)."""

    tag: str
    path: str
    read_only: bool = False


def supported(host_os: str) -> bool:
    """QEMU's 9p (`-fsdev local`) exists on Linux and macOS hosts only."""
    return host_os in ("linux", "darwin")


def _problem(path: str, is_dir: bool) -> str | None:
    if not posixpath.isabs(path):
        return "not an absolute POSIX path"
    if any(ch in path for ch in "\t\n\r\0"):
        return "contains a tab, newline or NUL"
    if posixpath.normpath(path) in GUEST_RESERVED or path.startswith(("/proc/", "/sys/", "/dev/", "/run/")):
        return "would hide a directory the VM itself needs"
    if not is_dir:
        return "is not a directory on the host"
    return None


def plan(shares: Iterable[Share], host_os: str, is_dir=os.path.isdir) -> list[GuestShare]:  # noqa: ANN001
    """The shares to set up, parents before children; unusable entries are logged and skipped."""
    if not supported(host_os):
        listed = list(shares)
        if listed:
            log.warning("host folders cannot be shared on %s yet (QEMU has no 9p there): %d share(s) ignored",
                        host_os, len(listed))
        return []
    chosen: dict[str, bool] = {}
    for share in shares:
        path = posixpath.normpath(share.path) if posixpath.isabs(share.path) else share.path
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        problem = _problem(path, is_dir(path))
        if problem:
            log.warning("share %r skipped: %s", share.path, problem)
            continue
        # The same folder twice: read-only wins only if every entry asks for it.
        chosen[path] = chosen.get(path, True) and share.read_only
    ordered = sorted(chosen, key=lambda p: (p.count("/"), p))
    return [GuestShare(f"{TAG_PREFIX}{i}", path, chosen[path]) for i, path in enumerate(ordered)]


def qemu_escape(value: str) -> str:
    """QEMU option values use ',' as separator; a literal comma is written ',,' (as spec.qemu_escape)."""
    return value.replace(",", ",,")


def share_argv(shares: Iterable[GuestShare]) -> list[str]:
    """`-fsdev` + `-device virtio-9p-pci` per share."""
    argv: list[str] = []
    for i, share in enumerate(shares):
        fsdev = f"local,id=fs{i},path={qemu_escape(share.path)},security_model=none"
        if share.read_only:
            fsdev += ",readonly=on"
        argv += ["-fsdev", fsdev, "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={share.tag}"]
    return argv


def fw_cfg_text(shares: Iterable[GuestShare]) -> str:
    """What the guest's boot script reads: `tag<TAB>path<TAB>ro|rw` per line (UTF-8)."""
    return "".join(f"{s.tag}\t{s.path}\t{'ro' if s.read_only else 'rw'}\n" for s in shares)


def covering(path: str, shares: Iterable[GuestShare | Share]) -> GuestShare | Share | None:
    """The share a host path lies in (the deepest one), or None."""
    best = None
    norm = posixpath.normpath(path)
    for share in shares:
        root = posixpath.normpath(share.path)
        if norm == root or norm.startswith(root.rstrip("/") + "/"):
            if best is None or len(root) > len(posixpath.normpath(best.path)):
                best = share
    return best


def unshared_binds(inspect: Mapping[str, Any], shares: Iterable[GuestShare]) -> list[str]:
    """Bind-mount sources of a container (inspect JSON) that lie outside every share.

    The engine resolves them in the VM, where such a path is an empty directory it created.
    """
    listed = list(shares)
    sources = []
    for mount in inspect.get("Mounts") or []:
        if mount.get("Type") != "bind":
            continue
        source = str(mount.get("Source") or "")
        if source and covering(source, listed) is None and source not in sources:
            sources.append(source)
    return sources


def bind_hint(container: str, sources: list[str]) -> str:
    joined = ", ".join(sources)
    return (f"container {container} bind-mounts {joined}, outside every shared folder: it sees a "
            f"directory of the VM, not the host's. Share it with `pinnace config set shares ...` "
            f"and restart the VM.")


def write_fw_cfg(path: Path, shares: Iterable[GuestShare]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(fw_cfg_text(shares), encoding="utf-8")


def parse_fw_cfg_text(text: str) -> list[GuestShare]:
    """Inverse of fw_cfg_text (an agent that adopts a running VM reads back what it was given)."""
    shares = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] and parts[1]:
            shares.append(GuestShare(parts[0], parts[1], parts[2] == "ro"))
    return shares


def read_fw_cfg(path: Path) -> list[GuestShare]:
    try:
        return parse_fw_cfg_text(path.read_text(encoding="utf-8"))
    except OSError:
        return []


class BindHinter:
    """Called with each newly seen container's inspect JSON: logs a hint per bind outside the shares."""

    def __init__(self, shares: Iterable[GuestShare]) -> None:
        self.shares = list(shares)

    def __call__(self, inspect: Mapping[str, Any]) -> None:
        sources = unshared_binds(inspect, self.shares)
        if sources:
            name = str(inspect.get("Name") or inspect.get("Id", "")[:12]).lstrip("/")
            log.warning("%s", bind_hint(name, sources))
