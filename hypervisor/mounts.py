"""Host folders shared into the guest at the same absolute path, so `docker run -v "$PWD":/src`
works unchanged: pure planning (settings -> shares, transport), the QEMU argv for them, the fw_cfg
text the guest's boot script reads, and the hint for bind mounts outside every share.

Two transports (setting `share_transport` = auto | 9p | virtiofs):

- virtio-9p (`-fsdev local,security_model=none` + `virtio-9p-pci`), Linux and macOS hosts. QEMU
  runs as the host user, so files a container writes belong to that user and modes round-trip.
  The guest mounts `trans=virtio,version=9p2000.L,msize=512000,cache=mmap` (vmimage/guest/boot):
  msize is the largest the guest kernel's virtio transport accepts; cache=mmap was chosen by
  measurement: it keeps metadata uncached, so a file changed on the host is seen at once, and still
  allows shared writable mmap (sqlite, etc.). Read-only: QEMU's `readonly=on` and a guest `ro` mount.
- virtiofs (`vhost-user-fs-pci` + one virtiofsd per share, hypervisor/virtiofsd.py), Linux hosts
  only: vhost-user needs the guest RAM in a shared memfd (`memory-backend-memfd,share=on`, see
  spec.memory_argv). virtiofsd runs "coherent" (virtiofsd.CACHE): file data is re-read at every
  open (close-to-open, as NFS), no name or attribute is cached in the guest (the C daemon's
  cache=auto with timeout=0; the Rust daemon's --cache=never --allow-mmap), and shared writable
  mmap works. Read-only: enforced on the host by virtiofsd's side and by a guest `ro` mount.

  Why not plain cache=auto, as first measured below: it keeps attributes, the file size among
  them, for 1 s, so a file the host had just appended to read back cut off at its old length in a
  running container for that second (a dev server reading a file its editor just saved).

Measured (tests/benchmarks/bench_ports_mounts.py; 2-core dev machine, TCG, QEMU 7.2 and its C
virtiofsd run as root; one VM sharing a folder under $HOME over each transport, a container over
the share vs the same static binary on the host, 3 interleaved rounds per run; each figure is the
range of the medians of the runs that had that variant: 9p in 3 runs, each virtiofs mode in 2):

                          256 MB write / read      5,000 x 1 KB: create / stat / read / delete
    host native          332-1364 / 10079-13264 MB/s   2.4-2.7 s / 11-12 ms / 26-33 ms / 61-74 ms
    9p, cache=mmap          52-57 /    72-80 MB/s      39.2-39.8 / 16.8-26.6 / 30.2-35.5 / 21.0-21.9 s
    virtiofs, cache=auto    42-73 /  100-159 MB/s      16.9-23.7 /   2.6-2.8 / 10.5-15.0 /  7.7-11.8 s
    virtiofs, cache=none  316-418 /  444-560 MB/s      21.2-35.8 / 10.6-15.8 / 19.3-22.6 / 12.1-23.1 s

  Small files, time vs host: 9p x38-47, virtiofs auto x13-20, none x22-39. Round by round,
  virtiofs (auto) beat 9p on the small-file total in all 6 rounds (1.3-3.2x; stat 6-10x, as the
  guest keeps attributes for 1 s) and on reads in 5 of 6; sequential writes are a wash (0.6-1.75x:
  the data goes through the guest's page cache, a copy that is emulated code under TCG). cache=none
  makes virtiofs 4.6-13x faster than 9p for sequential I/O (the guest hands its buffers straight to
  virtiofsd) and is fully coherent, but the kernel refuses MAP_SHARED on its files (ENODEV: the
  C daemon predates FUSE_DIRECT_IO_ALLOW_MMAP), which breaks sqlite's WAL, LMDB and the like; a
  1 s attribute cache seemed the smaller price — until it served cut-off files (above). The host
  was noisy (its create phase took 0.2-2.9 s across rounds), hence interleaving and ranges.
  Memory: QEMU's RSS 20 s after the engine answered, 2 GiB guest: 643 MiB with private guest RAM,
  637 MiB with the shared memfd (the same guest pages, counted as shmem), plus ~2.4 MiB PSS per
  virtiofsd: no measurable cost.

What coherence costs (same benchmark, 2026-12-01, one run, 3 interleaved rounds, medians;
128 MB sequential, 2,000 x 1 KB files):

                          128 MB write / read      2,000 x 1 KB: create / stat / read / delete   small-file total
    host native          1742 / 15422 MB/s           1.71 s / 4 ms / 11 ms / 25 ms                  1.75 s
    9p, cache=mmap         63 /   127 MB/s          10.19 / 4.15 / 6.48 / 4.25 s                    25.1 s
    virtiofs, auto         71 /   180 MB/s           6.08 / 0.71 / 3.30 / 1.82 s                    11.9 s
    virtiofs, coherent     69 /   167 MB/s           9.28 / 3.01 / 5.90 / 3.67 s                    21.9 s

  Coherence costs small-file workloads 1.8x against auto (every lookup and stat asks the host);
  sequential I/O is unchanged (data caching is the same). Coherent virtiofs still beats 9p on
  small files (1.15x: stat 1.4x, delete 1.2x) and reads, so it stays auto's choice.

So auto picks virtiofs on Linux when a usable virtiofsd is found (hypervisor/virtiofsd.py: the
Rust daemon, or QEMU's C one when the agent runs as root), else 9p; 9p on macOS (no virtiofsd, no
memfd); QEMU has neither on Windows hosts, where no share is set up (see `supported`).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypervisor.errors import MachineError, SettingsError

if TYPE_CHECKING:  # settings imports this module (its validator refuses guest system paths)
    from hypervisor.settings import Share

log = logging.getLogger("pinnace.mounts")

TAG_PREFIX = "pinnace"
FW_CFG_NAME = "opt/pinnace/shares"

# Guest paths a share may not be at, under, or above (a share is mounted at the same path in the
# guest, over whatever is there: one above these would hide them all). Each is something the guest
# itself uses (vmimage/guest/init, boot, engine, vmimage/rootfs.py); the text names it in errors.
GUEST_SYSTEM_PATHS: dict[str, str] = {
    # links into /usr in the merged-/usr image (rootfs.MERGED_USR); lib32/libx32 for good measure
    "/bin": "its programs (a link to /usr/bin)",
    "/sbin": "its programs (a link to /usr/sbin)",
    "/lib": "its libraries (a link to /usr/lib)",
    "/lib32": "its libraries",
    "/lib64": "its libraries (a link to /usr/lib64)",
    "/libx32": "its libraries",
    # programs and libraries; /usr/local/bin holds the busybox links the boot script creates
    "/usr": "its programs and libraries",
    # sshd_config, docker's daemon.json, containerd's config, passwd, hosts, resolv.conf
    "/etc": "its configuration",
    # kernel file systems and the tmpfs of sockets, pids and the per-instance keys (/run/pinnace)
    "/proc": "the kernel's process file system",
    "/sys": "the kernel's sysfs (and cgroups)",
    "/dev": "its devices",
    "/run": "its sockets and runtime state (the engine socket, the SSH keys)",
    # the data disk, and the engine's state bind-mounted from it
    "/data": "the data disk (images, containers, volumes)",
    "/var/lib": "the engine's state (/var/lib/docker, /var/lib/containerd, from the data disk)",
    "/var/run": "its sockets (a link to /run)",
    "/var/log": "the engine's logs (dockerd.log, which the boot waits on)",
    "/var/empty": "sshd's privilege-separation directory",
    # the root overlay's read-only lower layer and its RAM upper layer (vmimage/guest/init)
    "/mnt/ro": "the root image (the overlay's lower layer)",
    "/mnt/rw": "the root overlay's writable layer",
}
# Guest paths a share may not BE, though a folder under them is fine: the guest mounts its own
# tmpfs there before the shares, so /tmp/x mounts over a directory of it (pytest's tmp_path, the
# integration tests' folders), while /tmp itself would hide it.
GUEST_MOUNT_POINTS: dict[str, str] = {
    "/tmp": "its temporary files (a folder under /tmp can be shared)",
}
# Not listed, on purpose: /root (root's home in the guest holds nothing: sshd takes its keys from
# /run/pinnace, and it is the default share when the host user is root), /home, /Users, /opt,
# /srv, /media, /Volumes, /mnt/<other>, /var/<other> (macOS keeps $TMPDIR in /var/folders and
# root's home at /var/root), and /private (macOS's /private/tmp): the guest has nothing there.

TRANSPORTS = ("9p", "virtiofs")
# What share_transport = "auto" picks on Linux when virtiofsd is usable: the measured winner (above).
AUTO_LINUX = "virtiofs"
# The guest RAM object vhost-user-fs needs (virtiofsd maps the guest's memory to reach its buffers).
MEMORY_BACKEND_ID = "mem"


@dataclass(frozen=True)
class GuestShare:
    """One share as QEMU and the guest see it: the mount tag, the path (same on both sides), and
    the transport ("9p" or "virtiofs")."""

    tag: str
    path: str
    read_only: bool = False
    transport: str = "9p"


def supported(host_os: str) -> bool:
    """QEMU's 9p (`-fsdev local`) exists on Linux and macOS hosts only."""
    return host_os in ("linux", "darwin")


def choose_transport(setting: str, host_os: str, virtiofs_problem: str | None,
                     virtiofs_caveat: str | None = None) -> tuple[str, str]:
    """(transport, why) for the `share_transport` setting.

    `virtiofs_problem` is None when a usable virtiofsd was found, else why not (virtiofsd.locate);
    `virtiofs_caveat` is what works on 9p but not on that daemon (virtiofsd.shared_mmap_problem).
    "auto" takes AUTO_LINUX on Linux when it is usable without a caveat and 9p otherwise; an
    explicit "virtiofs" that cannot work raises instead of silently sharing over something else,
    and one with a caveat says so in its reason.
    """
    if setting == "9p":
        return "9p", "share_transport = 9p"
    if setting == "virtiofs":
        if host_os != "linux":
            raise MachineError(f"share_transport = virtiofs: needs a Linux host, not {host_os}")
        if virtiofs_problem:
            raise MachineError(f"share_transport = virtiofs: {virtiofs_problem} "
                               f"(or set share_transport to auto or 9p)")
        return "virtiofs", "share_transport = virtiofs" + (f" ({virtiofs_caveat})" if virtiofs_caveat else "")
    if host_os != "linux":
        return "9p", f"auto: 9p on {host_os} (virtiofs needs a Linux host)"
    if AUTO_LINUX == "virtiofs" and virtiofs_problem:
        return "9p", f"auto: 9p because virtiofs is unavailable: {virtiofs_problem}"
    if AUTO_LINUX == "virtiofs" and virtiofs_caveat:
        return "9p", f"auto: 9p because {virtiofs_caveat}"
    return AUTO_LINUX, f"auto: {AUTO_LINUX}, the faster transport measured on Linux"


class ShareError(SettingsError):
    """A shared folder in the settings cannot be set up (names the folder and the way out)."""


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def guest_path_problem(path: str) -> str | None:
    """Why a share cannot be mounted at `path` in the guest, or None: `path` is, is under, or is a
    parent of a guest system path. Pure; only absolute POSIX paths are judged here (the callers
    refuse relative ones; Windows paths are shared nowhere)."""
    if not posixpath.isabs(path):
        return None
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    for system, what in GUEST_SYSTEM_PATHS.items():
        if norm == system:
            return f"is the VM's own {system} ({what})"
        if _is_within(norm, system):
            return f"is under the VM's own {system} ({what})"
    for mount_point, what in GUEST_MOUNT_POINTS.items():
        if norm == mount_point:
            return f"is the VM's own {mount_point} ({what})"
    for system, what in (*GUEST_SYSTEM_PATHS.items(), *GUEST_MOUNT_POINTS.items()):
        if _is_within(system, norm):
            return f"would hide the VM's own {system} ({what})"
    return None


def _problem(path: str) -> str | None:
    """Why `path` (normalised) cannot be shared at all, whatever the host has there."""
    if not posixpath.isabs(path):
        return "is not an absolute POSIX path"
    if any(ch in path for ch in "\t\n\r\0"):
        return "contains a tab, newline or NUL"
    return guest_path_problem(path)


# How a user changes the list (in errors about one of its folders).
FIX_HINT = "`pinnace config set shares ...`"


def plan(shares: Iterable[Share], host_os: str, is_dir=os.path.isdir,  # noqa: ANN001
         transport: str = "9p", exists=os.path.exists) -> list[GuestShare]:  # noqa: ANN001
    """The shares to set up (over `transport`), parents before children.

    An unusable share is an error (ShareError, naming it), never skipped: a container would see an
    empty directory of the VM where it expects the host's files. Hosts without 9p share nothing.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown share transport {transport!r}")
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
        problem = _problem(path)
        if problem:
            raise ShareError(f"shared folder {share.path!r} {problem}: remove it with {FIX_HINT}")
        if not is_dir(path):
            if exists(path):
                raise ShareError(f"shared folder {path} is not a directory: remove it with {FIX_HINT}")
            raise ShareError(f"shared folder {path} does not exist: create it or remove it with {FIX_HINT}")
        # The same folder twice: read-only wins only if every entry asks for it.
        chosen[path] = chosen.get(path, True) and share.read_only
    ordered = sorted(chosen, key=lambda p: (p.count("/"), p))
    return [GuestShare(f"{TAG_PREFIX}{i}", path, chosen[path], transport) for i, path in enumerate(ordered)]


def needs_shared_memory(shares: Iterable[GuestShare]) -> bool:
    """vhost-user-fs needs the guest RAM in a shared memory object (virtiofsd maps it)."""
    return any(s.transport == "virtiofs" for s in shares)


def socket_name(share: GuestShare) -> str:
    """The vhost-user socket of a virtiofs share: `vfsN.sock`, no longer than `docker.sock` for
    N < 1000, so it fits wherever Paths.socket_dir puts the engine socket."""
    return f"vfs{share.tag.removeprefix(TAG_PREFIX)}.sock"


def share_argv(shares: Iterable[GuestShare], socket_dir: Path | None = None) -> list[str]:
    """Per share: `-fsdev` + `-device virtio-9p-pci` (9p), or `-chardev socket` to its virtiofsd
    (in `socket_dir`) + `-device vhost-user-fs-pci` (virtiofs). The shared guest memory that
    virtiofs also needs is spec.build_argv's (see needs_shared_memory)."""
    from hypervisor.spec import qemu_escape  # noqa: PLC0415 - spec imports this module: not at import time

    argv: list[str] = []
    for i, share in enumerate(shares):
        if share.transport == "virtiofs":
            if socket_dir is None:
                raise ValueError(f"virtiofs share {share.path}: no socket directory for its virtiofsd")
            sock = qemu_escape(str(socket_dir / socket_name(share)))
            argv += ["-chardev", f"socket,id=vfs{i},path={sock}",
                     "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag={share.tag}"]
            continue
        fsdev = f"local,id=fs{i},path={qemu_escape(share.path)},security_model=none"
        if share.read_only:
            fsdev += ",readonly=on"
        argv += ["-fsdev", fsdev, "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={share.tag}"]
    return argv


def fw_cfg_text(shares: Iterable[GuestShare]) -> str:
    """What the guest's boot script reads: `tag<TAB>path<TAB>ro|rw[<TAB>virtiofs]` per line (UTF-8).

    The transport column is written only for virtiofs: a 9p share reads exactly as before, so an
    image whose boot script predates virtiofs keeps mounting 9p shares (read-only ones included).
    """
    lines = []
    for s in shares:
        extra = f"\t{s.transport}" if s.transport != "9p" else ""
        lines.append(f"{s.tag}\t{s.path}\t{'ro' if s.read_only else 'rw'}{extra}\n")
    return "".join(lines)


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
        if len(parts) in (3, 4) and parts[0] and parts[1]:
            transport = parts[3] if len(parts) == 4 else "9p"
            if transport in TRANSPORTS:
                shares.append(GuestShare(parts[0], parts[1], parts[2] == "ro", transport))
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
