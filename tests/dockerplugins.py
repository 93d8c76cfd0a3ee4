"""Docker CLI plugins for tests: Debian's `docker-compose` (Compose v2) and `docker-buildx`, fetched
with the image builder's private apt (same suite, same cache) and installed only into a test-only
DOCKER_CONFIG, never into the user's ~/.docker or the system's plugin directories.

    plugins = install_plugins(Path(env["DOCKER_CONFIG"]))   # {"docker-compose": Path, ...}
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from vmimage import locations
from vmimage.apt import PrivateApt, debian_arch

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PLUGINS = ("docker-compose", "docker-buildx")
PLUGIN_DIR_IN_DEB = "usr/libexec/docker/cli-plugins"


class PluginUnavailable(RuntimeError):
    """The plugin packages are neither cached nor downloadable (offline, no keyring, no apt)."""


def private_apt(arch: str = "x86_64") -> PrivateApt:
    root = locations.cache_dir() / "apt" / f"{SUITE}-{debian_arch(arch)}"
    return PrivateApt(root, SUITE, MIRROR, KEYRING, arch)


def _cached_debs(apt: PrivateApt, names: tuple[str, ...]) -> dict[str, Path] | None:
    """The newest cached .deb of each package, or None if any is missing (then apt decides)."""
    found = {}
    for name in names:
        debs = sorted((apt.root / "debs").glob(f"{name}_*_{debian_arch(apt.arch)}.deb"))
        if not debs:
            return None
        found[name] = debs[-1]
    return found


def fetch_debs(names: tuple[str, ...] = PLUGINS, arch: str = "x86_64") -> dict[str, Path]:
    """The plugin .debs: from the builder's apt cache if there, else apt-get update + download."""
    apt = private_apt(arch)
    cached = _cached_debs(apt, names)
    if cached is not None:
        return cached
    from vmimage.errors import PackageError

    if not Path(KEYRING).is_file():
        raise PluginUnavailable(f"the Debian archive keyring {KEYRING} is missing "
                                "(apt-get install debian-archive-keyring)")
    try:
        apt.update()
        debs = {deb.package.name: deb.path for deb in apt.fetch(list(names))}
    except PackageError as exc:
        raise PluginUnavailable(f"cannot download {', '.join(names)} from {MIRROR}: {exc}") from exc
    missing = [n for n in names if n not in debs]
    if missing:
        raise PluginUnavailable(f"apt did not download {', '.join(missing)}")
    return debs


def _extract_plugin(deb: Path, name: str, dest: Path) -> Path:
    """Copy the one plugin binary out of the .deb (dpkg-deb, no root, no other files)."""
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = tar.extractfile(f"./{PLUGIN_DIR_IN_DEB}/{name}")
        if member is None:
            raise PluginUnavailable(f"{deb.name} has no {PLUGIN_DIR_IN_DEB}/{name}")
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(member, out)
    os.chmod(tmp, 0o755)
    target = dest / name
    os.replace(tmp, target)
    return target


def plugin_cache_dir(deb: Path) -> Path:
    """Extracted binaries are kept per .deb version, next to the apt cache."""
    return locations.cache_dir() / "docker-cli-plugins" / deb.stem


def install_plugins(docker_config: Path, names: tuple[str, ...] = PLUGINS, arch: str = "x86_64") -> dict[str, Path]:
    """Make `docker <plugin>` work for CLIs using `docker_config`; returns the installed paths.

    The binaries (~65 MB each) are extracted once into the user cache and hard-linked (or copied)
    into `<docker_config>/cli-plugins/`, where the docker CLI looks before any system directory.
    """
    if shutil.which("dpkg-deb") is None:
        raise PluginUnavailable("dpkg-deb is needed to unpack the plugin packages")
    debs = fetch_debs(names, arch)
    plugin_dir = Path(docker_config) / "cli-plugins"
    plugin_dir.mkdir(parents=True, exist_ok=True)
    installed = {}
    for name in names:
        cache = plugin_cache_dir(debs[name])
        cache.mkdir(parents=True, exist_ok=True)
        binary = cache / name
        if not binary.is_file():
            _extract_plugin(debs[name], name, cache)
        target = plugin_dir / name
        target.unlink(missing_ok=True)
        try:
            os.link(binary, target)
        except OSError:
            shutil.copy2(binary, target)
        installed[name] = target
    return installed
