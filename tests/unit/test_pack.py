"""The shipped archive on a tiny image: round trip, first-use unpack, damage, a foreign image."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from vmimage import manifest, pack, squashfs

pytestmark = pytest.mark.skipif(shutil.which("unsquashfs") is None, reason="needs squashfs-tools")


def tiny_image(directory: Path, tree: Path) -> manifest.Manifest:
    (tree / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/ssh" if Path("/usr/bin/ssh").is_file() else "/bin/ls", tree / "usr/bin/pie")
    (tree / "etc").mkdir()
    (tree / "etc/motd").write_text("hello\n" * 100)
    (tree / "etc/secret").write_text("s")
    (tree / "etc/secret").chmod(0o600)
    os.symlink("../usr/bin/pie", tree / "etc/link")
    directory.mkdir()
    squashfs.write_tree(tree, directory / "rootfs.img", 128 << 10)
    (directory / "vmlinuz").write_bytes(b"kernel" * 100)
    (directory / "initrd.img").write_bytes(b"070701" + b"x" * 100)
    (directory / "cmdline").write_text("quiet\n")
    (directory / "kernel.config").write_text("CONFIG_X=y\n")
    found = manifest.Manifest(
        name="pinnace", version="9.9", arch="x86_64", suite="trixie", kernel_version="6.12",
        kernel_config_sha256="0" * 64, cmdline="quiet", artifacts={k: manifest.describe(directory / f) for k, f in
                                    (("kernel", "vmlinuz"), ("initrd", "initrd.img"), ("rootfs", "rootfs.img"),
                                     ("cmdline", "cmdline"))})
    manifest.save(directory, found)
    return found


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Path, manifest.Manifest]:
    built = tiny_image(tmp_path / "image", tmp_path / "tree")
    out = tmp_path / "dist"
    out.mkdir()
    archive = pack.pack_image(tmp_path / "image", out, preset=1)
    assert archive.name == "pinnace-9.9-x86_64.tar.xz"
    return archive, built


def test_unpack_writes_every_artefact_back_byte_for_byte(packed: tuple[Path, manifest.Manifest],
                                                         tmp_path: Path) -> None:
    archive, built = packed
    assert pack.manifest_of(archive) == built
    with tarfile.open(archive, "r:xz") as tar:  # the executable went through both ELF transforms
        assert tar.getmember("root/usr/bin/pie").pax_headers == {pack.RELOCS_HEADER: "1", pack.GNUHASH_HEADER: "1"}
    found = pack.unpack_image(archive, tmp_path / "again")
    assert found == built
    for name in ("vmlinuz", "initrd.img", "rootfs.img", "cmdline", "kernel.config", "manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "image" / name).read_bytes(), name


def test_a_shipped_archive_is_unpacked_once_on_first_use(packed: tuple[Path, manifest.Manifest],
                                                         tmp_path: Path) -> None:
    archive, built = packed
    images = tmp_path / "usr/lib/pinnace/images"
    images.mkdir(parents=True)
    shutil.copy2(archive, images / archive.name)
    env = {"PINNACE_HOME": str(tmp_path / "home"), "PINNACE_CACHE_DIR": str(tmp_path / "cache")}
    package_dir = tmp_path / "usr/lib/pinnace/python"
    first = pack.image_dir_for("x86_64", env, package_dir)
    assert first.parent == tmp_path / "cache/images" and manifest.load(first) == built
    stamp = (first / "rootfs.img").stat().st_mtime_ns
    assert pack.image_dir_for("x86_64", env, package_dir) == first
    assert (first / "rootfs.img").stat().st_mtime_ns == stamp  # not unpacked again
    # an upgrade: another archive name; the earlier unpack goes, another architecture's stays
    foreign = tmp_path / "cache/images/pinnace-9.9-aarch64-1"
    foreign.mkdir()
    (foreign / "manifest.json").write_text("{}")
    (images / archive.name).rename(images / "pinnace-10.0-x86_64.tar.xz")
    second = pack.image_dir_for("x86_64", env, package_dir)
    assert second != first and manifest.load(second) == built
    assert not first.exists() and foreign.exists()


def test_a_damaged_archive_names_itself_and_writes_nothing(packed: tuple[Path, manifest.Manifest],
                                                          tmp_path: Path) -> None:
    archive, _ = packed
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.tar.xz"
    damaged.write_bytes(bytes(data))
    with pytest.raises(pack.PackError, match="damaged.tar.xz"):
        pack.unpack_image(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pinnace-unpack-")]


def test_an_image_not_written_by_pinnace_is_not_packed(tmp_path: Path) -> None:
    built = tiny_image(tmp_path / "image", tmp_path / "tree")
    with open(tmp_path / "image/rootfs.img", "r+b") as f:  # same files, other bytes: another writer's
        f.seek(built.artifacts["rootfs"].size - 1)
        f.write(b"\1")
    artifacts = {**built.artifacts, "rootfs": manifest.describe(tmp_path / "image/rootfs.img")}
    manifest.save(tmp_path / "image", dataclasses.replace(built, artifacts=artifacts))
    with pytest.raises(pack.PackError, match="not written by this version"):
        pack.pack_image(tmp_path / "image", tmp_path, preset=1)
