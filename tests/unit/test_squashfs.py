"""Pinnace's own squashfs writer, read back by squashfs-tools' unsquashfs (a reader it did not write)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
from pathlib import Path

import pytest

from vmimage import squashfs
from vmimage.errors import RootfsError

BLOCK = 4096


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n" * 1000)  # several blocks, compressible
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/bin/random").write_bytes(os.urandom(BLOCK * 2 + 17))  # incompressible: stored as is
    (root / "usr/bin/holes").write_bytes(b"x" * 10 + b"\0" * (BLOCK * 3) + b"y")  # an all-zero block is a hole
    (root / "usr/bin/exact").write_bytes(b"e" * BLOCK)
    (root / "empty").write_bytes(b"")
    (root / "secret").write_text("s")
    (root / "secret").chmod(0o600)
    (root / "setuid").write_text("u")
    (root / "setuid").chmod(0o4755)
    (root / "emptydir").mkdir()
    (root / "emptydir").chmod(0o700)
    os.symlink("usr/bin/tool", root / "link")
    os.symlink("../nowhere", root / "usr/dangling")
    many = root / "many"
    many.mkdir()
    for i in range(300):  # > 256 entries per header, and the inode table crosses an 8 KiB block
        (many / f"f{i:03d}-{'n' * 40}").write_text(str(i))
    (root / "b").mkdir()
    (root / "B").mkdir()  # sorted as bytes: "B" < "b"


def listing(image: Path) -> list[tuple[str, str]]:
    out = subprocess.run(["unsquashfs", "-lls", "-n", "-d", "", str(image)], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0][0] in "-dl":
            rows.append((fields[0], line.split(maxsplit=5)[5]))
    return rows


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    return root


def test_unsquashfs_reads_back_every_file_mode_and_link(tree: Path, tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    written = squashfs.write_tree(tree, image, BLOCK)
    assert written.size == image.stat().st_size and written.size % 4096 == 0
    out = tmp_path / "out"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(out), str(image)], check=True, capture_output=True)
    entries = {e.path: e for e in squashfs.walk(tree)}
    read = {e.path: e for e in squashfs.walk(out)}
    assert entries.keys() == read.keys()
    for path, entry in entries.items():
        assert read[path].kind == entry.kind and read[path].mode == entry.mode, path
        if entry.kind == "file":
            assert (out / path).read_bytes() == (tree / path).read_bytes(), path
        if entry.kind == "symlink":
            assert read[path].target == entry.target
    rows = dict((name, perms) for perms, name in listing(image))
    assert rows["/setuid"] == "-rwsr-xr-x" and rows["/secret"] == "-rw-------" and rows["/emptydir"] == "drwx------"
    assert rows["/link -> usr/bin/tool"].startswith("l")


def test_superblock_says_lz4_no_fragments_and_the_block_size(tree: Path, tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    squashfs.write_tree(tree, image, BLOCK)
    fields = squashfs.SUPERBLOCK.unpack(image.read_bytes()[:squashfs.SUPERBLOCK.size])
    magic, inodes, _, block_size, fragments, compression, block_log = fields[:7]
    assert (magic, block_size, fragments, compression, block_log) == (squashfs.MAGIC, BLOCK, 0, 5, 12)
    assert inodes == sum(1 for _ in squashfs.walk(tree))
    info = subprocess.run(["unsquashfs", "-s", str(image)], capture_output=True, text=True, check=True).stdout
    assert "Compression lz4" in info and "High Compression" in info


def test_holes_and_incompressible_blocks_are_recorded_as_such(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = squashfs.Writer(out, BLOCK)
    writer.add(squashfs.Entry("", "dir", 0o755))
    data = b"\0" * BLOCK + os.urandom(BLOCK) + b"a" * BLOCK
    writer.add(squashfs.Entry("f", "file", 0o644, size=len(data)), io.BytesIO(data))
    sizes = writer.nodes["f"].block_sizes
    assert sizes[0] == 0  # hole: nothing stored
    assert sizes[1] == BLOCK | squashfs.UNCOMPRESSED_BLOCK
    assert 0 < sizes[2] < BLOCK
    writer.finish()


def test_the_same_tree_gives_the_same_bytes(tree: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    digest = squashfs.write_tree(tree, first, BLOCK).tree_sha256
    os.utime(tree / "usr/bin/tool", (1, 1))  # times are not recorded
    assert squashfs.write_tree(tree, second, BLOCK).tree_sha256 == digest
    assert first.read_bytes() == second.read_bytes()
    (tree / "secret").chmod(0o640)  # a mode is content
    assert squashfs.write_tree(tree, second, BLOCK).tree_sha256 != digest


@pytest.mark.parametrize("text", ["3K", "2M", "1000", "x"])
def test_bad_block_sizes_are_refused(text: str) -> None:
    with pytest.raises((RootfsError, ValueError)):
        squashfs.block_size_bytes(text)


def test_block_sizes_read_like_mksquashfs() -> None:
    assert squashfs.block_size_bytes("1M") == 1 << 20
    assert squashfs.block_size_bytes("128K") == 128 << 10
    assert squashfs.block_size_bytes("4096") == 4096


def test_special_files_and_short_data_are_one_line_errors(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    os.mkfifo(root / "fifo")
    with pytest.raises(RootfsError, match="only directories, regular files and symlinks"):
        squashfs.write_tree(root, tmp_path / "x.img", BLOCK)
    writer = squashfs.Writer(io.BytesIO(), BLOCK)
    writer.add(squashfs.Entry("", "dir", 0o755))
    with pytest.raises(RootfsError, match="shorter than its size"):
        writer.add(squashfs.Entry("f", "file", 0o644, size=10), io.BytesIO(b"abc"))
    with pytest.raises(RootfsError, match="added before its directory"):
        writer.add(squashfs.Entry("a/b", "file", 0o644))


def test_metadata_references_address_stored_blocks() -> None:
    meta = squashfs._Metadata()
    meta.write(b"x" * (squashfs.METADATA_SIZE + 5))
    assert meta.ref() == ((squashfs.METADATA_SIZE + 2) << 16) | 5
    blocks = meta.blocks()
    assert struct.unpack("<H", blocks[:2])[0] == squashfs.METADATA_SIZE | squashfs.UNCOMPRESSED_METADATA
    assert len(blocks) == squashfs.METADATA_SIZE + 5 + 4


def test_a_stream_that_returns_short_reads_still_gives_whole_blocks(tmp_path: Path) -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, size: int = -1) -> bytes:
            part, self.data = self.data[:min(size, 1000)], self.data[min(size, 1000):]
            return part

    data = os.urandom(BLOCK) + b"a" * (BLOCK + 10)
    whole, trickled = io.BytesIO(), io.BytesIO()
    for out, source in ((whole, io.BytesIO(data)), (trickled, Trickle(data))):
        writer = squashfs.Writer(out, BLOCK)
        writer.add(squashfs.Entry("", "dir", 0o755))
        writer.add(squashfs.Entry("f", "file", 0o644, size=len(data)), source)  # type: ignore[arg-type]
        writer.finish()
    assert whole.getvalue() == trickled.getvalue()
