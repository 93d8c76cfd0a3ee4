"""Build the guest image: kernel, initrd, root image, cmdline and manifest.json."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vmimage import apt, manifest, rootfs
from vmimage.errors import ImageError, PackageError
from vmimage.initrd import build_initrd
from vmimage.kernel import KernelBuilder
from vmimage.recipe import ARCHES, Recipe

log = logging.getLogger(__name__)

FILES = {"kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.img", "cmdline": "cmdline"}
BUDGET_TOTAL = 45 * 1024 * 1024
BUDGET_KERNEL = 4 * 1024 * 1024


@dataclass(frozen=True)
class BuildResult:
    directory: Path
    manifest: manifest.Manifest
    seconds: float


def _unpack_all(debs: list[apt.DebFile], dest: Path) -> dict[str, str]:
    """Unpack every package into one tree; returns path -> owning package name."""
    owners: dict[str, str] = {}
    for deb in debs:
        for name in apt.unpack(deb.path, dest):
            owners.setdefault(name, deb.package.name)
    return owners


def build_image(recipe: Recipe, arch: str, out: Path, cache_dir: Path) -> BuildResult:
    if arch not in ARCHES:
        raise ImageError(f"unsupported architecture {arch!r} (supported: {', '.join(ARCHES)})")
    started = time.monotonic()
    fragment = recipe.kernel_config(arch)
    debarch = apt.debian_arch(arch)
    pkgs = apt.PrivateApt(cache_dir / "apt" / f"{recipe.suite}-{debarch}", recipe.suite,
                          recipe.mirror, recipe.keyring, arch)
    log.info("packages: updating %s lists for %s", recipe.suite, debarch)
    pkgs.update()
    debs = pkgs.fetch(list(recipe.packages))
    source = pkgs.fetch([recipe.kernel_source_package])
    source_deb = next((d for d in source if d.package.name == recipe.kernel_source_package), None)
    if source_deb is None:
        raise PackageError(f"{recipe.kernel_source_package}: not found in {recipe.suite}")

    log.info("kernel: building from %s %s", source_deb.package.name, source_deb.package.version)
    kernel = KernelBuilder(cache_dir).build(
        source_deb.path, manifest.sha256_file(source_deb.path), fragment, arch
    )

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pinnace-image-", dir=out.parent) as tmp:
        work = Path(tmp)
        log.info("root: unpacking %d packages", len(debs))
        owners = _unpack_all(debs, work / "pkgs")
        tree = rootfs.Tree(work / "pkgs", owners)
        selection = rootfs.select_files(tree, recipe, arch)
        root = work / "root"
        rootfs.copy_selection(tree, selection, root)
        used = selection.packages | rootfs.add_guest_files(tree, recipe, root)

        staged = work / "out"
        staged.mkdir()
        log.info("root: packing squashfs (%s)", recipe.compression)
        rootfs.pack_squashfs(root, staged / FILES["rootfs"], recipe, arch)
        build_initrd(tree.root / "usr/bin/busybox", recipe.guest_file(recipe.initrd_init),
                     staged / FILES["initrd"], recipe.initrd_compression)
        shutil.copyfile(kernel.image, staged / FILES["kernel"])
        (staged / FILES["cmdline"]).write_text(recipe.cmdline + "\n")

        used_packages = sorted(
            ({"name": d.package.name, "version": d.package.version, "arch": d.package.arch}
             for d in [*debs, source_deb] if d.package.name in used or d is source_deb),
            key=lambda p: p["name"],
        )
        result = manifest.Manifest(
            name=recipe.name,
            version=recipe.version,
            arch=arch,
            suite=recipe.suite,
            kernel_version=kernel.release,
            kernel_config_sha256=manifest.sha256_file(kernel.config),
            cmdline=recipe.cmdline,
            artifacts={kind: manifest.describe(staged / name) for kind, name in FILES.items()},
            packages=used_packages,
            recipe_sha256=hashlib.sha256(recipe.path.read_bytes()).hexdigest(),
        )
        shutil.copyfile(kernel.config, staged / "kernel.config")
        for name in [*FILES.values(), "kernel.config"]:
            (staged / name).replace(out / name)
        manifest.save(out, result)
    seconds = time.monotonic() - started
    return BuildResult(out, result, seconds)


def check_budget(m: manifest.Manifest, archive_size: int | None = None) -> list[str]:
    """Size budget problems (empty when within budget). The total budget applies to the guest as
    users download it, the archive `vmimage pack` writes, not to the lz4 image installed from it."""
    problems = []
    if m.artifacts["kernel"].size > BUDGET_KERNEL:
        problems.append(f"kernel is {m.artifacts['kernel'].size} bytes (budget {BUDGET_KERNEL})")
    if archive_size is not None and archive_size > BUDGET_TOTAL:
        problems.append(f"the shipped archive is {archive_size} bytes (budget {BUDGET_TOTAL})")
    return problems
