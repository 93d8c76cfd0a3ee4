"""The guest image an instance boots: where it is (vmimage.locations alone answers that) and
whether its artefacts are the ones its manifest names (sizes, then sha256), before QEMU sees them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hypervisor.errors import MachineError
from vmimage import locations
from vmimage import manifest as image_manifest

log = logging.getLogger("pinnace.agent")

BOOT_ARTIFACTS = ("kernel", "initrd", "rootfs")


class ImageError(MachineError):
    """No usable guest image: missing, unreadable manifest, wrong architecture or damaged artefact."""


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
    directory = locations.default_image_dir(arch)
    if not (directory / "manifest.json").is_file():
        raise ImageError(f"no guest image for {arch} in {directory}: run `pinnace image build` first")
    try:
        found = image_manifest.load(directory)
    except image_manifest.ManifestError as exc:
        raise ImageError(f"the guest image in {directory} has an unreadable manifest "
                         f"(rebuild it with `pinnace image build`)", exc) from exc
    if found.arch != arch:
        raise ImageError(f"the image in {directory} is for {found.arch}, not {arch} "
                         f"(a foreign guest needs PINNACE_ARCH={found.arch})")
    return GuestImage(directory, found)


def verify(image: GuestImage) -> None:
    """Every boot artefact present with the size and sha256 its manifest records."""
    try:
        image_manifest.verify(image.directory, image.manifest)
    except image_manifest.ManifestError as exc:
        raise ImageError(f"the guest image in {image.directory} is incomplete", exc) from exc
    for kind in BOOT_ARTIFACTS:
        artifact = image.manifest.artifacts[kind]
        actual = image_manifest.sha256_file(image.path(kind))
        if actual != artifact.sha256:
            raise ImageError(f"the guest image's {kind} ({image.path(kind)}) does not match its manifest "
                             f"(sha256 {actual[:12]}…, expected {artifact.sha256[:12]}…): "
                             f"rebuild it with `pinnace image build` or reinstall")
