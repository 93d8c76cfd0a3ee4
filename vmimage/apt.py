"""A private apt configuration for the guest's Debian suite.

Its own sources, lists, cache and (empty) dpkg status live in one directory passed with
`-o Dir::...`, so the builder works the same from any host release and never touches the
host's apt state.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmimage.errors import PackageError

log = logging.getLogger(__name__)

DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class DebFile:
    package: Package
    path: Path


def debian_arch(arch: str) -> str:
    try:
        return DEBIAN_ARCH[arch]
    except KeyError as exc:
        raise PackageError(f"unsupported architecture {arch!r}") from exc


def sources_text(mirror: str, suite: str, keyring: str) -> str:
    return f"Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\nSigned-By: {keyring}\n"


def apt_options(root: Path, arch: str) -> list[str]:
    """The -o options that make apt use only `root` (pure, for tests)."""
    opts = {
        "Dir::Etc::SourceList": "/dev/null",
        "Dir::Etc::SourceParts": str(root / "etc"),
        "Dir::Etc::Preferences": "/dev/null",
        "Dir::Etc::PreferencesParts": str(root / "etc" / "preferences.d"),
        "Dir::State::Lists": str(root / "lists"),
        "Dir::State::status": str(root / "status"),
        "Dir::Cache": str(root / "cache"),
        "Dir::Cache::archives": str(root / "debs"),
        "APT::Architecture": debian_arch(arch),
        "APT::Architectures": debian_arch(arch),
        "APT::Install-Recommends": "false",
        "Debug::NoLocking": "true",
        "APT::Sandbox::User": "root",
        "Acquire::Retries": "2",
    }
    return [arg for key, value in opts.items() for arg in ("-o", f"{key}={value}")]


_INST = re.compile(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)")


def parse_simulated_install(text: str) -> list[Package]:
    """Packages apt would install, from `apt-get -s install` output."""
    found = []
    for line in text.splitlines():
        m = _INST.match(line)
        if m:
            found.append(Package(name=m.group(1).split(":")[0], version=m.group(2), arch=m.group(3)))
    return found


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if line.startswith(("E:", "Err:")):
            return line.split(":", 1)[1].strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown apt failure"


class PrivateApt:
    """apt-get with its own state directory for one suite and architecture."""

    def __init__(self, root: Path, suite: str, mirror: str, keyring: str, arch: str) -> None:
        self.root, self.suite, self.mirror, self.keyring, self.arch = root, suite, mirror, keyring, arch

    def _run(self, args: list[str], what: str) -> str:
        cmd = ["apt-get", "-q", *apt_options(self.root, self.arch), *args]
        log.debug("running %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except FileNotFoundError as exc:
            raise PackageError("apt-get not found: the image builder needs a Debian/Ubuntu host") from exc
        if proc.returncode != 0:
            raise PackageError(f"{what}: {_first_error(proc.stderr + proc.stdout)}")
        return proc.stdout

    def prepare(self) -> None:
        for sub in ("etc/preferences.d", "lists/partial", "cache", "debs/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / f"{self.suite}.sources").write_text(
            sources_text(self.mirror, self.suite, self.keyring)
        )
        (self.root / "status").touch()

    def update(self) -> None:
        self.prepare()
        out = self._run(["update"], f"cannot update the package lists from {self.mirror} ({self.suite})")
        if "Err:" in out or "Failed to fetch" in out:
            raise PackageError(f"cannot reach the Debian mirror {self.mirror}: {_first_error(out)}")

    def resolve(self, names: list[str]) -> list[Package]:
        out = self._run(["-s", "install", *names], "cannot resolve packages")
        return parse_simulated_install(out)

    def fetch(self, names: list[str]) -> list[DebFile]:
        """Resolve `names` with their dependencies and download what is not cached yet."""
        packages = self.resolve(names)
        self._run(["-y", "-d", "install", *names], "cannot download packages")
        debs = []
        for pkg in packages:
            path = self.root / "debs" / deb_filename(pkg)
            if not path.is_file():
                raise PackageError(f"package {pkg.name} {pkg.version}: downloaded file missing ({path.name})")
            debs.append(DebFile(pkg, path))
        return debs


def deb_filename(pkg: Package) -> str:
    """The file name apt gives a downloaded package (epoch colon quoted as %3a)."""
    return f"{pkg.name}_{pkg.version.replace(':', '%3a')}_{pkg.arch}.deb"


def unpack(deb: Path, dest: Path) -> list[str]:
    """Extract a .deb's data into dest without root; returns the paths it holds (relative)."""
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False)
    if listing.returncode != 0:
        raise PackageError(f"cannot read {deb.name}: {listing.stderr.decode(errors='replace').strip()}")
    import io
    import tarfile

    names = []
    with tarfile.open(fileobj=io.BytesIO(listing.stdout)) as tar:
        for member in tar.getmembers():
            name = member.name.lstrip("./")
            if name:
                names.append(name)
        tar.extractall(dest, filter="tar")
    return names
