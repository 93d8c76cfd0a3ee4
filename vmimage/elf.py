"""Just enough ELF reading: a binary's interpreter and DT_NEEDED libraries, and its sections.

The guest's shared libraries are resolved from the binaries themselves, not guessed; the shipped
archive's reversible transforms (relocs, gnuhash) find their tables through `sections`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

ELF64_LE = b"\x7fELF\x02\x01"
PT_INTERP, PT_DYNAMIC = 3, 2
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5
SECTION_HEADER = struct.Struct("<IIQQQQI")  # name, type, flags, addr, offset, size, link


@dataclass(frozen=True)
class Section:
    name: bytes  # from the section-name table; b"" where the file has none
    kind: int  # sh_type
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class ElfInfo:
    interpreter: str | None
    needed: tuple[str, ...]


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def read_elf(data: bytes) -> ElfInfo:
    """Parse a 64-bit little-endian ELF image (x86_64 and aarch64 both are)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segments = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        segments.append((p_type, p_offset, p_vaddr, p_filesz))

    interpreter = None
    dynamic = None
    for p_type, offset, _vaddr, size in segments:
        if p_type == PT_INTERP:
            interpreter = data[offset : offset + size].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, size)
    if dynamic is None:
        return ElfInfo(interpreter, ())

    entries = []
    offset, size = dynamic
    for pos in range(offset, offset + size, 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    strtab_vaddr = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab_vaddr is None:
        return ElfInfo(interpreter, ())
    strtab = _vaddr_to_offset(segments, strtab_vaddr)
    needed = tuple(_cstring(data, strtab + v) for t, v in entries if t == DT_NEEDED)
    return ElfInfo(interpreter, needed)


def sections(data: bytes | bytearray) -> list[Section]:
    """The section headers of a little-endian ELF64 file; [] for anything else, or when the
    header table does not lie inside the file. Offsets and sizes are as the file states them:
    callers check them against len(data) before reading there."""
    if len(data) < 64 or data[:6] != ELF64_LE:
        return []
    shoff, = struct.unpack_from("<Q", data, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
    if shentsize < SECTION_HEADER.size or shoff + shnum * shentsize > len(data):
        return []
    headers = [SECTION_HEADER.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4] if shstrndx < shnum else None
    found = []
    for name_at, kind, _flags, _addr, offset, size, link in headers:
        name = b""
        if names_offset is not None:
            start = names_offset + name_at
            end = data.find(b"\0", start) if start < len(data) else -1
            name = bytes(data[start:end]) if end >= 0 else b""
        found.append(Section(name, kind, offset, size, link))
    return found


def _vaddr_to_offset(segments: list[tuple[int, int, int, int]], vaddr: int) -> int:
    for p_type, offset, seg_vaddr, size in segments:
        if p_type == 1 and seg_vaddr <= vaddr < seg_vaddr + size:  # PT_LOAD
            return offset + (vaddr - seg_vaddr)
    raise ValueError(f"address {vaddr:#x} is in no loadable segment")


def _cstring(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode()
