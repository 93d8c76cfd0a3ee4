"""The image manifest: what the hypervisor reads to boot an image, and what users audit."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmimage.errors import ManifestError

MANIFEST = "manifest.json"
ARTIFACTS = ("kernel", "initrd", "rootfs", "cmdline")


@dataclass(frozen=True)
class Artifact:
    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    arch: str
    suite: str
    kernel_version: str
    kernel_config_sha256: str
    cmdline: str
    artifacts: dict[str, Artifact]
    packages: list[dict[str, str]] = field(default_factory=list)
    recipe_sha256: str = ""
    # The version of what the image writes on the data disk (ext4 features, the engine's storage
    # layout). Raised when an image changes it so that an older image could not read the disk:
    # the hypervisor never falls back from an image to one with an older data format.
    data_format: int = 1

    @property
    def boot_size(self) -> int:
        """kernel + initrd + root image: the figure the size budget applies to."""
        return sum(self.artifacts[k].size for k in ("kernel", "initrd", "rootfs"))

    def path_of(self, directory: Path, kind: str) -> Path:
        return directory / self.artifacts[kind].file

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: Path) -> Artifact:
    return Artifact(file=path.name, sha256=sha256_file(path), size=path.stat().st_size)


def save(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.to_json())
    tmp.replace(path)
    return path


BOOT_ARTIFACTS = ("kernel", "initrd", "rootfs")


def _artifact(kind: str, raw: object) -> Artifact:
    if not isinstance(raw, dict):
        raise TypeError(f"artifact {kind!r} is not an object")
    art = Artifact(**raw)
    if not isinstance(art.file, str) or art.file in ("", ".", "..") or "/" in art.file or "\\" in art.file:
        raise ValueError(f"artifact {kind!r}: bad file name {art.file!r}")
    if not isinstance(art.sha256, str) or len(art.sha256) != 64:
        raise ValueError(f"artifact {kind!r}: bad sha256")
    if not isinstance(art.size, int) or isinstance(art.size, bool) or art.size < 0:
        raise ValueError(f"artifact {kind!r}: bad size")
    return art


def load(directory: Path) -> Manifest:
    """The manifest in `directory`: ManifestError "no image" when it is missing, "corrupt
    manifest" (naming the file) when it does not parse or lacks what a boot needs."""
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        listed = raw.pop("artifacts")
        if not isinstance(listed, dict):
            raise TypeError("artifacts is not an object")
        artifacts = {k: _artifact(k, v) for k, v in listed.items()}
        missing = [k for k in BOOT_ARTIFACTS if k not in artifacts]
        if missing:
            raise KeyError(f"no {missing[0]} artifact")
        found = Manifest(artifacts=artifacts, **raw)
        if type(found.data_format) is not int or found.data_format < 1:
            raise TypeError("data_format is not a positive integer")
        return found
    except FileNotFoundError as exc:
        raise ManifestError(f"no image at {directory} (run `pinnace image build`)") from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ManifestError(f"{path}: corrupt manifest", exc) from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest", exc) from exc


def verify(directory: Path, manifest: Manifest) -> None:
    """Check sizes (cheap) of every artefact; a truncated or missing file is an error."""
    for kind, art in manifest.artifacts.items():
        path = directory / art.file
        if not path.is_file() or path.stat().st_size != art.size:
            raise ManifestError(f"image artefact {kind} ({path}) is missing or damaged; rebuild the image")
