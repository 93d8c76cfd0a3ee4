"""Writes the guest's root image: a squashfs 4.0 with lz4 (high compression) data blocks.

Pinnace writes it itself instead of running mksquashfs so that the same bytes come out of the
build and out of `vmimage unpack` on a user's machine (macOS and Windows have no squashfs-tools):
the download then carries the root tree in an xz archive a third the lz4 image's size, and the
image rebuilt from it is checked against the manifest's sha256.

The layout is the simplest the kernel reads: data blocks in the order files are added, no
fragments (a file's tail is a short block of its own), uncompressed metadata, one owner (root), no
xattrs, no export table, every time 0. Files are added in one canonical order (`walk`), so a tree
and the archive made from it give identical images.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import lz4.block

from vmimage.errors import RootfsError

MAGIC = 0x73717368
LZ4_ID = 5
LZ4_LEGACY = 1
LZ4_FLAG_HC = 1
METADATA_SIZE = 8192
UNCOMPRESSED_METADATA = 0x8000
UNCOMPRESSED_BLOCK = 1 << 24
NO_TABLE = 0xFFFF_FFFF_FFFF_FFFF
NO_FRAGMENT = 0xFFFF_FFFF
SUPERBLOCK = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")
# Flags: inodes/fragments uncompressed, no fragments, no xattrs, compressor options present.
FLAGS = 0x0001 | 0x0008 | 0x0010 | 0x0100 | 0x0200 | 0x0400
DIR_TYPE, FILE_TYPE, SYMLINK_TYPE = 1, 2, 3
MAX_DIR_ENTRIES = 256
PAD = 4096
DEFAULT_LEVEL = 9  # lz4 HC's default level, as mksquashfs -Xhc uses


@dataclass(frozen=True)
class Entry:
    """One path of the tree: '' is the root; `size` for files, `target` for symlinks."""

    path: str
    kind: str  # "dir" | "file" | "symlink"
    mode: int
    size: int = 0
    target: str = ""


@dataclass(frozen=True)
class Written:
    size: int
    # sha256 over every entry (path, kind, mode, target) and file's bytes, in order: what the
    # image holds, whichever lz4 library compressed it.
    tree_sha256: str


@dataclass
class _Node:
    entry: Entry
    children: dict[bytes, _Node] = field(default_factory=dict)
    blocks_start: int = 0
    block_sizes: list[int] = field(default_factory=list)
    number: int = 0
    ref: int = 0


def block_size_bytes(text: str) -> int:
    """'1M', '128K' or a number of bytes: a power of two from 4 KiB to 1 MiB (the kernel's range)."""
    units = {"K": 1 << 10, "M": 1 << 20}
    raw = text.strip().upper()
    value = int(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else int(raw)
    if value < 4096 or value > 1 << 20 or value & (value - 1):
        raise RootfsError(f"squashfs block size {text!r} is not a power of two from 4K to 1M")
    return value


def walk(root: Path) -> Iterator[Entry]:
    """The tree under `root` in the canonical order: depth first, names sorted as bytes."""
    yield _entry_of(root, "")
    yield from _walk_dir(root, "")


def _walk_dir(directory: Path, rel: str) -> Iterator[Entry]:
    for name in sorted(os.listdir(directory), key=os.fsencode):
        path = directory / name
        child = f"{rel}/{name}" if rel else name
        entry = _entry_of(path, child)
        yield entry
        if entry.kind == "dir":
            yield from _walk_dir(path, child)


def _entry_of(path: Path, rel: str) -> Entry:
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return Entry(rel, "dir", mode)
    if stat.S_ISLNK(st.st_mode):
        return Entry(rel, "symlink", 0o777, target=os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        return Entry(rel, "file", mode, size=st.st_size)
    raise RootfsError(f"{path}: only directories, regular files and symlinks go into the root image")


class Writer:
    """Add entries parent-first (as `walk` yields them), file data with each file; then `finish`."""

    def __init__(self, out: BinaryIO, block_size: int = 1 << 20, level: int = DEFAULT_LEVEL, threads: int = 0):
        self.out = out
        self.block_size = block_size
        self.level = level
        self.pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)
        self.root: _Node | None = None
        self.nodes: dict[str, _Node] = {}
        self.tree_digest = hashlib.sha256()
        self.options = struct.pack("<II", LZ4_LEGACY, LZ4_FLAG_HC)
        self.position = SUPERBLOCK.size + 2 + len(self.options)
        out.write(b"\0" * SUPERBLOCK.size)
        out.write(struct.pack("<H", len(self.options) | UNCOMPRESSED_METADATA) + self.options)

    def add(self, entry: Entry, data: BinaryIO | None = None) -> None:
        node = _Node(entry)
        self.tree_digest.update(repr((entry.path, entry.kind, entry.mode, entry.size, entry.target)).encode())
        if entry.path == "":
            if entry.kind != "dir":
                raise RootfsError("the root of the image must be a directory")
            self.root = node
        else:
            parent_path, _, name = entry.path.rpartition("/")
            parent = self.nodes.get(parent_path)
            if parent is None or parent.entry.kind != "dir":
                raise RootfsError(f"{entry.path}: added before its directory")
            key = os.fsencode(name)
            if key in parent.children or not key or len(key) > 256:
                raise RootfsError(f"{entry.path}: duplicate or bad name")
            parent.children[key] = node
        self.nodes[entry.path] = node
        if entry.kind == "file":
            self._write_data(node, data if data is not None else io.BytesIO())

    def _write_data(self, node: _Node, data: BinaryIO) -> None:
        node.blocks_start = self.position
        remaining = node.entry.size
        chunks: list[bytes] = []
        while remaining > 0:
            chunk = _read_up_to(data, min(self.block_size, remaining))
            if not chunk:
                raise RootfsError(f"{node.entry.path}: shorter than its size {node.entry.size}")
            chunks.append(chunk)
            self.tree_digest.update(chunk)
            remaining -= len(chunk)
            if len(chunks) == 16:
                self._emit(node, chunks)
                chunks = []
        self._emit(node, chunks)

    def _emit(self, node: _Node, chunks: list[bytes]) -> None:
        for chunk, packed in zip(chunks, self.pool.map(self._compress, chunks), strict=True):
            if packed is None:  # a hole: all zeros, nothing stored
                node.block_sizes.append(0)
            elif len(packed) < len(chunk):
                self.out.write(packed)
                node.block_sizes.append(len(packed))
                self.position += len(packed)
            else:
                self.out.write(chunk)
                node.block_sizes.append(len(chunk) | UNCOMPRESSED_BLOCK)
                self.position += len(chunk)

    def _compress(self, chunk: bytes) -> bytes | None:
        if len(chunk) == self.block_size and chunk.count(0) == len(chunk):
            return None
        return lz4.block.compress(chunk, mode="high_compression", compression=self.level, store_size=False)

    def finish(self) -> Written:
        """Write inode, directory and id tables and the superblock."""
        self.pool.shutdown()
        if self.root is None:
            raise RootfsError("the image has no root directory")
        order = list(_post_order(self.root))
        for number, node in enumerate(order, start=1):
            node.number = number
        inodes, listings = _Metadata(), _Metadata()
        parents = {id(child): node for node in order for child in node.children.values()}
        for node in order:
            parent = parents.get(id(node))
            node.ref = inodes.ref()
            inodes.write(self._inode(node, listings, parent.number if parent else len(order) + 1))
        inode_table = self.position
        self._write(inodes.blocks())
        directory_table = self.position
        self._write(listings.blocks())
        ids = _Metadata()
        ids.write(struct.pack("<I", 0))
        id_block = self.position
        self._write(ids.blocks())
        id_table = self.position
        self._write(struct.pack("<Q", id_block))
        used = self.position
        self.out.write(b"\0" * (-used % PAD))
        self.out.seek(0)
        self.out.write(SUPERBLOCK.pack(
            MAGIC, len(order), 0, self.block_size, 0, LZ4_ID, self.block_size.bit_length() - 1, FLAGS, 1, 4, 0,
            self.root.ref, used, id_table, NO_TABLE, inode_table, directory_table, NO_TABLE, NO_TABLE))
        self.out.seek(0, io.SEEK_END)
        return Written(used + (-used % PAD), self.tree_digest.hexdigest())

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.position += len(data)

    def _inode(self, node: _Node, listings: _Metadata, parent: int) -> bytes:
        entry = node.entry
        kind = {"dir": DIR_TYPE, "file": FILE_TYPE, "symlink": SYMLINK_TYPE}[entry.kind]
        head = struct.pack("<HHHHII", kind, entry.mode & 0o7777, 0, 0, 0, node.number)
        if entry.kind == "file":
            if entry.size >= 1 << 32 or node.blocks_start >= 1 << 32:
                raise RootfsError(f"{entry.path}: files and images over 4 GiB are not supported")
            return head + struct.pack(f"<IIII{len(node.block_sizes)}I", node.blocks_start, NO_FRAGMENT, 0,
                                      entry.size, *node.block_sizes)
        if entry.kind == "symlink":
            target = os.fsencode(entry.target)
            return head + struct.pack("<II", 1, len(target)) + target
        start = listings.ref()
        listing = _listing(node)
        if len(listing) + 3 > 0xFFFF:
            raise RootfsError(f"{entry.path or '/'}: too many entries for one directory")
        listings.write(listing)
        subdirs = sum(1 for c in node.children.values() if c.entry.kind == "dir")
        return head + struct.pack("<IIHHI", start >> 16, 2 + subdirs, len(listing) + 3, start & 0xFFFF, parent)


def _read_up_to(data: BinaryIO, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the stream: a short read mid-file would cut a block."""
    parts = []
    while size > 0:
        part = data.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _post_order(node: _Node) -> Iterator[_Node]:
    """Children before their directory, so a directory's listing can name their inodes."""
    for key in sorted(node.children):
        child = node.children[key]
        if child.entry.kind == "dir":
            yield from _post_order(child)
        else:
            yield child
    yield node


def _listing(node: _Node) -> bytes:
    """Directory entries in runs sharing one inode metadata block (the format's headers)."""
    out = bytearray()
    children = [(key, node.children[key]) for key in sorted(node.children)]
    i = 0
    while i < len(children):
        block, base = children[i][1].ref >> 16, children[i][1].number
        run = []
        while (i < len(children) and len(run) < MAX_DIR_ENTRIES and children[i][1].ref >> 16 == block
               and -0x8000 <= children[i][1].number - base < 0x8000):
            run.append(children[i])
            i += 1
        out += struct.pack("<III", len(run) - 1, block, base)
        for key, child in run:
            kind = {"dir": DIR_TYPE, "file": FILE_TYPE, "symlink": SYMLINK_TYPE}[child.entry.kind]
            out += struct.pack("<HhHH", child.ref & 0xFFFF, child.number - base, kind, len(key) - 1) + key
    return bytes(out)


class _Metadata:
    """A metadata stream cut into 8 KiB blocks, each stored uncompressed behind its 2-byte header.
    A reference is (block's offset in the table << 16) | offset inside the block."""

    def __init__(self) -> None:
        self.data = bytearray()

    def ref(self) -> int:
        block, offset = divmod(len(self.data), METADATA_SIZE)
        return (block * (METADATA_SIZE + 2)) << 16 | offset

    def write(self, data: bytes) -> None:
        self.data += data

    def blocks(self) -> bytes:
        out = bytearray()
        for start in range(0, len(self.data), METADATA_SIZE):
            chunk = self.data[start:start + METADATA_SIZE]
            out += struct.pack("<H", len(chunk) | UNCOMPRESSED_METADATA) + chunk
        return bytes(out)


def write_tree(root: Path, output: Path, block_size: int, level: int = DEFAULT_LEVEL) -> Written:
    """The image of the directory `root` at `output`."""
    with open(output, "wb") as out:
        writer = Writer(out, block_size, level)
        for entry in walk(root):
            if entry.kind == "file":
                with open(root / entry.path, "rb") as data:
                    writer.add(entry, data)
            else:
                writer.add(entry)
        return writer.finish()
