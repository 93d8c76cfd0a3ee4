"""Finding the QEMU binaries and reading what they can do (version, accelerators).

Discovery is pure (host facts are injected); only `QemuBinary.probe` runs QEMU.
"""

from __future__ import annotations

import logging
import ntpath
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hypervisor.errors import QemuNotFoundError, QemuVersionError
from hypervisor.platform import for_os

log = logging.getLogger(__name__)

QEMU_ENV = "PINNACE_QEMU"
QEMU_IMG_ENV = "PINNACE_QEMU_IMG"
PROBE_TIMEOUT_S = 10

# 7.0 is the oldest release we test: `-accel tcg,tb-size`, virtio-balloon free-page-reporting,
# `-chardev file` + `-qmp ...,server=on,wait=off` boolean syntax all work as we use them.
MIN_QEMU: tuple[int, int, int] = (7, 0, 0)
MIN_QEMU_REASON = (
    "Pinnace needs -accel tcg,tb-size, virtio-balloon free-page-reporting and on/off option syntax"
)

ARCHES = ("x86_64", "aarch64")

SEARCH_DIRS: dict[str, tuple[str, ...]] = {
    "darwin": ("/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin"),
    "windows": (r"C:\Program Files\qemu",),
    "linux": ("/usr/bin", "/usr/local/bin", "/usr/libexec", "/snap/bin"),
}

Which = Callable[[str], "str | None"]
IsFile = Callable[[Path], bool]


def system_binary_name(arch: str) -> str:
    if arch not in ARCHES:
        raise QemuNotFoundError(f"arch {arch!r}: unsupported guest architecture (expected one of {ARCHES})")
    return f"qemu-system-{arch}"


def install_hint(host_os: str, arch: str = "x86_64") -> str:
    """One sentence telling the user how to get QEMU on this OS."""
    if host_os == "darwin":
        return "install it with `brew install qemu`"
    if host_os == "windows":
        return (
            "install it with `winget install SoftwareFreedomConservancy.QEMU` "
            "or the installer from https://www.qemu.org/download/#windows"
        )
    pkg = "qemu-system-arm" if arch == "aarch64" else "qemu-system-x86"
    return (
        f"install it with `sudo apt-get install {pkg} qemu-utils` (Debian/Ubuntu) "
        f"or `sudo dnf install {pkg.replace('-arm', '-aarch64')} qemu-img` (Fedora)"
    )


def _search_dirs(host_os: str, env: Mapping[str, str]) -> list[str]:
    dirs = list(SEARCH_DIRS.get(host_os, SEARCH_DIRS["linux"]))
    if host_os == "windows":
        program_files = env.get("ProgramFiles") or env.get("PROGRAMFILES")
        if program_files:
            candidate = ntpath.join(program_files, "qemu")
            if candidate.lower() not in (d.lower() for d in dirs):
                dirs.insert(0, candidate)
    return dirs


def _join(host_os: str, directory: str, name: str) -> Path:
    return for_os(host_os).executable(directory, name)


def _find(
    name: str,
    env_var: str,
    host_os: str,
    env: Mapping[str, str],
    which: Which,
    is_file: IsFile,
    extra_dirs: tuple[str, ...] = (),
) -> Path | None:
    override = env.get(env_var, "").strip()
    if override:
        path = Path(override)
        if not is_file(path):
            raise QemuNotFoundError(f"{env_var}={override}: no such file")
        return path
    found = which(name)
    if found:
        return Path(found)
    for directory in (*extra_dirs, *_search_dirs(host_os, env)):
        candidate = _join(host_os, directory, name)
        if is_file(candidate):
            return candidate
    return None


def find_qemu(
    arch: str,
    host_os: str,
    env: Mapping[str, str],
    which: Which,
    is_file: IsFile,
) -> Path:
    """PINNACE_QEMU, then PATH, then the usual per-OS install locations."""
    name = system_binary_name(arch)
    found = _find(name, QEMU_ENV, host_os, env, which, is_file)
    if found is None:
        raise QemuNotFoundError(
            f"{name} not found on PATH or in the usual places; {install_hint(host_os, arch)}"
        )
    log.debug("using %s", found)
    return found


def firmware_candidates(qemu: Path, name: str, host_os: str) -> list[Path]:
    """Where a QEMU install keeps its firmware blobs, relative to the binary (and to the file a
    symlinked binary points at, as Homebrew's are): <prefix>/share/qemu on Unix-like installs, the
    install directory itself on Windows."""
    if host_os == "windows":
        bin_dir = ntpath.dirname(str(qemu))
        return [Path(ntpath.join(bin_dir, name)), Path(ntpath.join(bin_dir, "share", name))]
    return list(dict.fromkeys(binary.parent.parent / "share" / "qemu" / name for binary in (qemu, qemu.resolve())))


def find_firmware(qemu: Path, name: str, host_os: str, is_file: IsFile = Path.is_file) -> Path | None:
    """The firmware file `name` of this QEMU install, or None when it does not ship it."""
    return next((p for p in firmware_candidates(qemu, name, host_os) if is_file(p)), None)


def find_qemu_img(
    host_os: str,
    env: Mapping[str, str],
    which: Which,
    is_file: IsFile,
    near: Path | None = None,
) -> Path:
    """Like `find_qemu`; `near` (the qemu-system path) is tried first after PINNACE_QEMU_IMG and PATH."""
    extra = (str(near.parent),) if near is not None else ()
    found = _find("qemu-img", QEMU_IMG_ENV, host_os, env, which, is_file, extra)
    if found is None:
        raise QemuNotFoundError(f"qemu-img not found on PATH or in the usual places; {install_hint(host_os)}")
    return found


def parse_version(text: str) -> tuple[int, int, int]:
    """Read "QEMU emulator version 7.2.19 (Debian ...)" (also qemu-img's "qemu-img version 8.2.2")."""
    match = re.search(r"version\s+(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        first = text.strip().splitlines()[0] if text.strip() else "(no output)"
        raise QemuVersionError(f"cannot read the QEMU version from {first!r}")
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro or 0)


def format_version(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def check_version(version: tuple[int, int, int], minimum: tuple[int, int, int] = MIN_QEMU) -> None:
    if version < minimum:
        raise QemuVersionError(
            f"QEMU {format_version(version)} is too old; {MIN_QEMU_REASON}, "
            f"so install QEMU {format_version(minimum)} or newer"
        )


def accelerators_from_help(text: str) -> set[str]:
    """Parse `-accel help`: a header line ending in ':' followed by one name per line."""
    accels = set()
    for line in text.splitlines():
        word = line.strip()
        if not word or word.endswith(":") or " " in word:
            continue
        accels.add(word.lower())
    return accels


Runner = Callable[[list[str]], str]


def _run(argv: list[str]) -> str:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    return result.stdout


@dataclass(frozen=True)
class QemuBinary:
    """A located qemu-system binary and what it reported about itself."""

    path: Path
    version: tuple[int, int, int]
    accelerators: frozenset[str] = field(default_factory=frozenset)

    @property
    def version_text(self) -> str:
        return format_version(self.version)

    @classmethod
    def probe(cls, path: Path, run: Runner = _run) -> QemuBinary:
        """Run `--version` and `-accel help`; checks the minimum version."""
        try:
            version = parse_version(run([str(path), "--version"]))
            check_version(version)
            accels = accelerators_from_help(run([str(path), "-accel", "help"]))
        except (OSError, subprocess.SubprocessError) as exc:
            raise QemuNotFoundError(f"{path}: cannot run it", exc) from exc
        log.info("QEMU %s at %s supports %s", format_version(version), path, ", ".join(sorted(accels)))
        return cls(path=Path(path), version=version, accelerators=frozenset(accels))
