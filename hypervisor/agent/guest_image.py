"""The guest image an instance boots: where it is (vmimage.locations answers that; an installer's
archive is unpacked there first) and whether its artefacts are the ones its manifest names
(sizes, then sha256), before QEMU sees them.

Hashing ~70 MB at every start costs a noticeable part of a start, so each artefact's sha256 is
remembered in a small JSON file in the user's cache dir (`image-sha256.json`), keyed by the file's
absolute path and its (device, inode, size, mtime_ns, ctime_ns). Any change to the file, even one
that puts its mtime back, moves its ctime (on POSIX; Windows reports the creation time there), so
the cached digest is used only for the very file it was computed from. The cache is a hint: an
unreadable, corrupt or foreign cache is ignored (every artefact is hashed again), a cached digest
that does not match is checked by hashing again, and failing to write the cache only costs the
next start a hash.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor import platform as host_platform
from hypervisor.errors import MachineError, SettingsError
from hypervisor.paths import Paths
from vmimage import locations
from vmimage import manifest as image_manifest
from vmimage import pack as image_pack

log = logging.getLogger("pinnace.agent")

BOOT_ARTIFACTS = ("kernel", "initrd", "rootfs")
HASH_CACHE_NAME = "image-sha256.json"
HASH_CACHE_VERSION = 1
HASH_CACHE_MAX_ENTRIES = 64  # a few images x 4 artefacts; the oldest are dropped beyond that
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
REBUILD_HINT = "rebuild it with `pinnace image build` or reinstall"


class ImageError(MachineError):
    """No usable guest image: missing, corrupt manifest, wrong architecture or damaged artefact."""


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    manifest: image_manifest.Manifest

    def path(self, kind: str) -> Path:
        return self.manifest.path_of(self.directory, kind)

    @property
    def cmdline(self) -> str:
        return self.manifest.cmdline


def locate(arch: str) -> GuestImage:
    """The image for `arch` (ImageError naming the directory and the fix otherwise)."""
    try:
        directory = image_pack.image_dir_for(arch)
    except image_pack.PackError as exc:
        raise ImageError("the guest image Pinnace shipped could not be unpacked (reinstall Pinnace)", exc) from exc
    if not (directory / "manifest.json").is_file():
        raise ImageError(f"no guest image for {arch} in {directory}: run `pinnace image build` first")
    try:
        found = image_manifest.load(directory)
    except image_manifest.ManifestError as exc:
        raise ImageError(f"the guest image in {directory} has a corrupt manifest "
                         f"({REBUILD_HINT})", exc) from exc
    if found.arch != arch:
        raise ImageError(f"the image in {directory} is for {found.arch}, not {arch} "
                         f"(a foreign guest needs PINNACE_ARCH={found.arch})")
    return GuestImage(directory, found)


# --- the sha256 cache ----------------------------------------------------------------------------


def default_hash_cache(env: Mapping[str, str] | None = None) -> Path:
    """Where the digests are remembered: the user's cache dir (PINNACE_HOME's when set)."""
    try:
        return Paths.for_instance("default", env).cache_dir / HASH_CACHE_NAME
    except SettingsError:  # a PINNACE_HOME the start refuses anyway: the build cache will do
        return locations.cache_dir(env) / HASH_CACHE_NAME


def _identity(info: os.stat_result) -> dict[str, int]:
    return {"dev": info.st_dev, "inode": info.st_ino, "size": info.st_size,
            "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}


class HashCache:
    """sha256 digests of files, valid only while the file's identity (path, device, inode, size,
    mtime, ctime) is unchanged. Never raises: a cache that cannot be read is an empty one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = self._load()
        self.changed = False

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.info("ignoring the image hash cache %s: %s", self.path, exc)
            return {}
        if not isinstance(raw, dict) or raw.get("version") != HASH_CACHE_VERSION:
            return {}
        entries = raw.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}

    def lookup(self, path: Path, info: os.stat_result) -> str | None:
        entry = self.entries.get(str(path))
        if entry is None:
            return None
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            return None
        identity = _identity(info)
        if any(type(entry.get(k)) is not int or entry.get(k) != v for k, v in identity.items()):
            return None
        return digest

    def remember(self, path: Path, info: os.stat_result, digest: str) -> None:
        self.entries.pop(str(path), None)
        self.entries[str(path)] = {**_identity(info), "sha256": digest}  # last in = newest
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        kept = {k: v for k, v in self.entries.items() if os.path.isfile(k)}
        kept = dict(list(kept.items())[-HASH_CACHE_MAX_ENTRIES:])
        text = json.dumps({"version": HASH_CACHE_VERSION, "entries": kept}, indent=1, sort_keys=True)
        plat = host_platform.current()
        try:
            plat.private_dir(self.path.parent, tighten=False)
            plat.write_atomic(self.path, text.encode("utf-8"), private=True)
        except OSError as exc:  # an optimisation: the next start hashes again
            log.warning("cannot write the image hash cache %s: %s", self.path, exc)
            return
        self.changed = False

    def sha256(self, path: Path, trust: bool = True) -> str:
        """The file's digest: the cached one when `trust` and its identity is unchanged, else
        computed (and remembered when the file did not change while it was read)."""
        path = Path(os.path.abspath(path))
        before = os.stat(path)
        if trust:
            cached = self.lookup(path, before)
            if cached is not None:
                return cached
        digest = image_manifest.sha256_file(path)
        try:
            after = os.stat(path)
        except OSError:
            return digest
        if _identity(after) == _identity(before):
            self.remember(path, after, digest)
        return digest


# --- verification --------------------------------------------------------------------------------


def verify(image: GuestImage, cache_file: Path | None = None, *, trust_cache: bool = True,
           kinds: Iterable[str] = BOOT_ARTIFACTS) -> None:
    """Every artefact in `kinds` present with the size and sha256 its manifest records.

    Digests come from the hash cache (`cache_file`, default `default_hash_cache()`) when the file
    is unchanged since it was hashed; `trust_cache=False` hashes every artefact again (and
    refreshes the cache), as `pinnace diagnose` does."""
    try:
        image_manifest.verify(image.directory, image.manifest)
    except image_manifest.ManifestError as exc:
        raise ImageError(f"the guest image in {image.directory} is incomplete", exc) from exc
    cache = HashCache(cache_file if cache_file is not None else default_hash_cache())
    try:
        for kind in kinds:
            artifact = image.manifest.artifacts[kind]
            try:
                actual = cache.sha256(image.path(kind), trust=trust_cache)
                if actual != artifact.sha256 and trust_cache:  # never refuse an image on a cached digest
                    actual = cache.sha256(image.path(kind), trust=False)
            except OSError as exc:
                raise ImageError(f"cannot read the guest image's {kind} ({image.path(kind)})", exc) from exc
            if actual != artifact.sha256:
                raise ImageError(f"the guest image's {kind} ({image.path(kind)}) does not match its manifest "
                                 f"(sha256 {actual[:12]}…, expected {artifact.sha256[:12]}…): {REBUILD_HINT}")
    finally:
        cache.save()
