"""Variants of a built guest image for update and rollback tests, made in seconds instead of a
rebuild: the same kernel, initrd and root image (hard links), another kernel command line and
version in a manifest of their own. A marker on the command line is visible in the guest's
/proc/cmdline; `rdinit=/nonexistent` makes a kernel that panics (no init), a broken update."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from vmimage import manifest as image_manifest

BROKEN_CMDLINE = "rdinit=/nonexistent init=/nonexistent"


def derive(source: Path, target: Path, version: str, extra_cmdline: str) -> Path:
    """An image in `target` booting `source`'s artefacts with `extra_cmdline` appended."""
    found = image_manifest.load(source)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for kind in ("kernel", "initrd", "rootfs"):
        name = found.artifacts[kind].file
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copyfile(source / name, target / name)
    cmdline = f"{found.cmdline} {extra_cmdline}".strip()
    cmdline_file = found.artifacts["cmdline"].file
    (target / cmdline_file).write_text(cmdline + "\n")
    artifacts = dict(found.artifacts)
    artifacts["cmdline"] = image_manifest.describe(target / cmdline_file)
    image_manifest.save(target, dataclasses.replace(found, version=version, cmdline=cmdline, artifacts=artifacts))
    return target


def tiny(directory: Path, version: str, arch: str = "x86_64", data_format: int = 1, cmdline: str = "quiet") -> Path:
    """An image of a few bytes per artefact with a real manifest, for the slot logic without a VM
    (the bytes say which image they are: "<kind> of <version> <cmdline>")."""
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    for kind, name in (("kernel", "vmlinuz"), ("initrd", "initrd.img"), ("rootfs", "rootfs.img"),
                       ("cmdline", "cmdline")):
        (directory / name).write_bytes(f"{kind} of {version} {cmdline}".encode())
        artifacts[kind] = image_manifest.describe(directory / name)
    image_manifest.save(directory, image_manifest.Manifest(
        name="pinnace", version=version, arch=arch, suite="trixie", kernel_version="6.12-test",
        kernel_config_sha256="0" * 64, cmdline=cmdline, artifacts=artifacts, data_format=data_format))
    return directory


def corrupt(image: Path, kind: str = "rootfs") -> None:
    """Change bytes of an artefact (same size, new inode) so it no longer matches the manifest."""
    found = image_manifest.load(image)
    path = image / found.artifacts[kind].file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))
