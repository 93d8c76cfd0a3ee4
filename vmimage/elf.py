"""Just enough ELF reading to find a binary's interpreter and DT_NEEDED libraries.

The guest's shared libraries are resolved from the binaries themselves, not guessed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PT_INTERP, PT_DYNAMIC = 3, 2
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5


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


def _vaddr_to_offset(segments: list[tuple[int, int, int, int]], vaddr: int) -> int:
    for p_type, offset, seg_vaddr, size in segments:
        if p_type == 1 and seg_vaddr <= vaddr < seg_vaddr + size:  # PT_LOAD
            return offset + (vaddr - seg_vaddr)
    raise ValueError(f"address {vaddr:#x} is in no loadable segment")


def _cstring(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode()
