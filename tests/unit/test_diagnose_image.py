"""The guest image's verification at every start: sha256 digests cached by file identity (a second
verify hashes nothing, a changed file is hashed again, a corrupt or wrong cache is harmless), a
mismatch is one line naming the file and the fix, and a corrupt manifest says so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hypervisor.agent import guest_image
from hypervisor.hostinfo import host_arch
from vmimage import manifest as image_manifest

FILES = {"kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.img", "cmdline": "cmdline"}


def make_image(directory: Path, arch: str | None = None) -> image_manifest.Manifest:
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    for kind, name in FILES.items():
        (directory / name).write_bytes(f"{kind} ".encode() * 4096)
        artifacts[kind] = image_manifest.describe(directory / name)
    found = image_manifest.Manifest(name="pinnace", version="0.1.0", arch=arch or host_arch(), suite="trixie",
                                    kernel_version="6.12-test", kernel_config_sha256="0" * 64,
                                    cmdline="quiet", artifacts=artifacts)
    image_manifest.save(directory, found)
    return found


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> guest_image.GuestImage:
    directory = tmp_path / "image"
    make_image(directory)
    monkeypatch.setenv("PINNACE_IMAGE_DIR", str(directory))
    return guest_image.locate(host_arch())


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file hashed, in order (the real digest is still computed)."""
    seen: list[Path] = []
    real = image_manifest.sha256_file

    def counting(path: Path) -> str:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(image_manifest, "sha256_file", counting)
    return seen


def test_a_second_verify_hashes_nothing(image: guest_image.GuestImage, hashed: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "image-sha256.json"
    guest_image.verify(image, cache)
    assert len(hashed) == 3  # kernel, initrd, rootfs
    guest_image.verify(image, cache)
    assert len(hashed) == 3
    stored = json.loads(cache.read_text())
    assert stored["version"] == 1 and len(stored["entries"]) == 3
    assert oct(cache.stat().st_mode & 0o777) == "0o600"


def test_a_changed_mtime_hashes_again(image: guest_image.GuestImage, hashed: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    guest_image.verify(image, cache)
    rootfs = image.path("rootfs")
    info = rootfs.stat()
    os.utime(rootfs, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    hashed.clear()
    guest_image.verify(image, cache)
    assert [p.name for p in hashed] == ["rootfs.img"]


def test_a_byte_flipped_with_its_mtime_put_back_is_still_found(image: guest_image.GuestImage, hashed: list[Path],
                                                               tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    guest_image.verify(image, cache)
    rootfs = image.path("rootfs")
    info = rootfs.stat()
    with open(rootfs, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(rootfs, ns=(info.st_atime_ns, info.st_mtime_ns))  # the ctime still moves
    with pytest.raises(guest_image.ImageError) as caught:
        guest_image.verify(image, cache)
    message = str(caught.value)
    assert "\n" not in message
    assert "rootfs" in message and str(rootfs) in message and "pinnace image build" in message


def test_a_corrupt_cache_is_ignored_and_rewritten(image: guest_image.GuestImage, hashed: list[Path],
                                                  tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    guest_image.verify(image, cache)
    assert len(hashed) == 3
    assert json.loads(cache.read_text())["version"] == 1
    for garbage in ('[1, 2]', '{"version": 1, "entries": {"x": 3}}', '{"version": 99, "entries": {}}'):
        cache.write_text(garbage)
        hashed.clear()
        guest_image.verify(image, cache)
        assert len(hashed) == 3, garbage


def test_a_wrong_cached_digest_never_refuses_a_good_image(image: guest_image.GuestImage, hashed: list[Path],
                                                          tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    guest_image.verify(image, cache)
    stored = json.loads(cache.read_text())
    for entry in stored["entries"].values():
        entry["sha256"] = "f" * 64
    cache.write_text(json.dumps(stored))
    hashed.clear()
    guest_image.verify(image, cache)  # the cached digests are wrong: hashed again, and they match
    assert len(hashed) == 3


def test_not_trusting_the_cache_hashes_everything(image: guest_image.GuestImage, hashed: list[Path],
                                                  tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    guest_image.verify(image, cache)
    hashed.clear()
    guest_image.verify(image, cache, trust_cache=False, kinds=tuple(image.manifest.artifacts))
    assert len(hashed) == 4


def test_an_unwritable_cache_only_costs_a_hash(image: guest_image.GuestImage, hashed: list[Path],
                                               tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    guest_image.verify(image, blocker / "cache.json")  # its "directory" is a file
    guest_image.verify(image, blocker / "cache.json")
    assert len(hashed) == 6


def test_the_default_cache_lives_in_the_cache_dir(tmp_path: Path) -> None:
    assert guest_image.default_hash_cache({"PINNACE_HOME": str(tmp_path)}) == tmp_path / "cache" / "image-sha256.json"


@pytest.mark.parametrize("text", ["{not json", "[]", '{"artifacts": []}', '{"name": "x"}',
                                  '{"artifacts": {"kernel": {"file": "../x", "sha256": "0", "size": 1}}}'])
def test_a_corrupt_manifest_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    directory = tmp_path / "image"
    make_image(directory)
    (directory / "manifest.json").write_text(text)
    with pytest.raises(image_manifest.ManifestError, match="corrupt manifest"):
        image_manifest.load(directory)
    monkeypatch.setenv("PINNACE_IMAGE_DIR", str(directory))
    with pytest.raises(guest_image.ImageError) as caught:
        guest_image.locate(host_arch())
    assert "corrupt manifest" in str(caught.value) and "\n" not in str(caught.value)
    assert "pinnace image build" in str(caught.value)


def test_a_manifest_without_a_boot_artefact_is_corrupt(tmp_path: Path) -> None:
    directory = tmp_path / "image"
    found = make_image(directory)
    raw = json.loads(found.to_json())
    del raw["artifacts"]["initrd"]
    (directory / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(image_manifest.ManifestError, match="corrupt manifest.*initrd"):
        image_manifest.load(directory)
