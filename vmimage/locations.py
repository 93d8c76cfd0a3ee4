"""Where images and build caches live by default (platformdirs; PINNACE_HOME / PINNACE_CACHE_DIR
override), so `python -m vmimage` and the hypervisor agree without importing each other."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

APP = "pinnace"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Build caches (apt state, kernels) are shared by every PINNACE_HOME: they are big and keyed."""
    env = os.environ if env is None else env
    if env.get("PINNACE_CACHE_DIR"):
        return Path(env["PINNACE_CACHE_DIR"])
    return Path(platformdirs.user_cache_dir(APP))


def image_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("PINNACE_HOME"):
        return Path(env["PINNACE_HOME"]) / "images"
    return Path(platformdirs.user_data_dir(APP)) / "images"


def build_image_dir(arch: str, env: Mapping[str, str] | None = None) -> Path:
    """Where `image build` writes: PINNACE_IMAGE_DIR, else <image root>/<arch> (never a bundle)."""
    env = os.environ if env is None else env
    if env.get("PINNACE_IMAGE_DIR"):
        return Path(env["PINNACE_IMAGE_DIR"])
    return image_root(env) / arch


def bundled_image_roots(package_dir: Path | None = None) -> list[Path]:
    """Images shipped beside the installed program, relative to the directory holding our packages:
    the .deb's /usr/lib/pinnace/python -> /usr/lib/pinnace/images, a PyInstaller folder's _internal -> images,
    a macOS bundle's Contents/Frameworks -> Contents/Resources/images."""
    package_dir = package_dir or Path(__file__).resolve().parent.parent
    return [package_dir.parent / "images", package_dir.parent / "Resources" / "images"]


def default_image_dir(arch: str, env: Mapping[str, str] | None = None, package_dir: Path | None = None) -> Path:
    """The image to boot: PINNACE_IMAGE_DIR wins; then one the user built; then one an installer
    shipped (users of a package never build), unpacked or as its archive's unpack directory; else
    the build location, so errors name it."""
    user_dir = build_image_dir(arch, env)
    if (env if env is not None else os.environ).get("PINNACE_IMAGE_DIR") or _has_manifest(user_dir):
        return user_dir
    for root in bundled_image_roots(package_dir):
        if _has_manifest(root / arch):
            return root / arch
    archive = bundled_archive(arch, package_dir)
    if archive is not None:
        return unpacked_dir(archive, env)
    return user_dir


def bundled_archive(arch: str, package_dir: Path | None = None) -> Path | None:
    """An image an installer shipped as its download form (`vmimage pack`); an installer ships one
    per architecture (the last by name otherwise)."""
    for root in bundled_image_roots(package_dir):
        found = sorted(root.glob(f"*-{arch}.tar.xz")) if root.is_dir() else []
        if found:
            return found[-1]
    return None


def unpacked_dir(archive: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where a shipped archive is unpacked on first use: the user's cache, one directory per archive
    (its name carries the version; its size tells a rebuilt one apart), so an upgrade's new image
    is used at once and a user-built image still wins."""
    stem = archive.name.removesuffix(".tar.xz")
    return cache_dir(env) / "images" / f"{stem}-{archive.stat().st_size}"


def _has_manifest(directory: Path) -> bool:
    return (directory / "manifest.json").is_file()
