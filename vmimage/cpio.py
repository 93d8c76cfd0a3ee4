"""A newc cpio writer: every entry root-owned with a fixed mtime, so the initrd is reproducible
and building it needs no root and no host-owned files."""

from __future__ import annotations

import io
from dataclasses import dataclass

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int  # including the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, S_IFDIR | perm)


def regular(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, S_IFCHR | perm, rdev=(major, minor))


def _pad(buf: io.BytesIO) -> None:
    buf.write(b"\0" * (-buf.tell() % 4))


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    fields = [
        ino, entry.mode, 0, 0, 2 if entry.mode & S_IFDIR else 1, 0, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(name) + 1, 0,
    ]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def write_newc(entries: list[Entry]) -> bytes:
    """Serialise entries (sorted by name, parents first) followed by the trailer."""
    buf = io.BytesIO()
    ordered = sorted(entries, key=lambda e: e.name)
    for ino, entry in enumerate([*ordered, Entry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode()
        buf.write(_header(0 if entry.name == "TRAILER!!!" else ino, entry, name))
        buf.write(name + b"\0")
        _pad(buf)
        buf.write(entry.data)
        _pad(buf)
    return buf.getvalue()
