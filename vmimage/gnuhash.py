"""A reversible transform of ELF executables for the shipped archive: the GNU symbol hash table.

Debian's Go binaries export every symbol dynamically (dockerd: 223,712 of them), and the dynamic
linker's `.gnu.hash` table over those names is 1.3 MB of hash bits that xz cannot shrink (1.1 MB
compressed). The table is a function of the symbol names and its 16-byte header, so the archive
keeps only the header; unpacking computes the bloom filter, the buckets and the chains again.
Measured on Debian 13's dockerd: 21.24 MB compressed as is, 20.1 MB without the table.

A file is transformed only if recomputing its table gives back exactly the bytes it holds, so
`restore(transform(x)) == x` for each file transformed; the archive's tree digest checks it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmimage.elf import sections

SHT_DYNSYM, SHT_GNU_HASH = 11, 0x6FFFFFF6
SYMBOL = struct.Struct("<IBBHQQ")
HEADER = struct.Struct("<IIII")  # nbuckets, symoffset, bloom_size, bloom_shift
BLOOM_BITS = 64


@dataclass(frozen=True)
class Tables:
    """Where a file's hash table and the symbols it covers are (file offsets and sizes)."""
    hash_offset: int
    hash_size: int
    dynsym_offset: int
    dynsym_size: int
    dynstr_offset: int
    dynstr_size: int


def find_tables(data: bytes | bytearray) -> Tables | None:
    found = sections(data)
    for table in found:
        if table.kind != SHT_GNU_HASH or table.link >= len(found):
            continue
        symbols = found[table.link]
        if symbols.kind != SHT_DYNSYM or symbols.link >= len(found):
            return None
        strings = found[symbols.link]
        if max(table.offset + table.size, symbols.offset + symbols.size, strings.offset + strings.size) > len(data):
            return None
        return Tables(table.offset, table.size, symbols.offset, symbols.size, strings.offset, strings.size)
    return None


def gnu_hash(name: bytes) -> int:
    h = 5381
    for c in name:
        h = h * 33 + c
    return h & 0xFFFFFFFF  # the same modulo 2**32 as masking each step, and faster in Python


def compute(data: bytes | bytearray, tables: Tables) -> bytes | None:
    """The whole table as the header in `data` asks for it, or None if the header is not sane."""
    if tables.hash_size < HEADER.size:
        return None
    nbuckets, symoffset, bloom_size, bloom_shift = HEADER.unpack_from(data, tables.hash_offset)
    nsyms = tables.dynsym_size // SYMBOL.size
    size = HEADER.size + 8 * bloom_size + 4 * nbuckets + 4 * max(0, nsyms - symoffset)
    if not nbuckets or not bloom_size or symoffset > nsyms or size != tables.hash_size:
        return None
    strings = bytes(data[tables.dynstr_offset:tables.dynstr_offset + tables.dynstr_size])
    bloom = [0] * bloom_size
    buckets = [0] * nbuckets
    hashes = []
    for index in range(symoffset, nsyms):
        name_at = SYMBOL.unpack_from(data, tables.dynsym_offset + index * SYMBOL.size)[0]
        end = strings.find(b"\0", name_at)
        if name_at >= len(strings) or end < 0:
            return None
        h = gnu_hash(strings[name_at:end])
        hashes.append(h)
        bloom[(h // BLOOM_BITS) % bloom_size] |= (1 << (h % BLOOM_BITS)) | (1 << ((h >> bloom_shift) % BLOOM_BITS))
        if not buckets[h % nbuckets]:
            buckets[h % nbuckets] = index
    chains = []
    for i, h in enumerate(hashes):
        last = i + 1 == len(hashes) or hashes[i + 1] % nbuckets != h % nbuckets
        chains.append((h & ~1) | last)
    return (HEADER.pack(nbuckets, symoffset, bloom_size, bloom_shift)
            + struct.pack(f"<{bloom_size}Q{nbuckets}I{len(chains)}I", *bloom, *buckets, *chains))


def transform(data: bytearray) -> bool:
    """Zero the table after its header, in place; False (data untouched) when the file has no
    table or one that recomputing would not give back byte for byte."""
    tables = find_tables(data)
    if tables is None:
        return False
    end = tables.hash_offset + tables.hash_size
    if compute(data, tables) != data[tables.hash_offset:end]:
        return False
    data[tables.hash_offset + HEADER.size:end] = bytes(tables.hash_size - HEADER.size)
    return True


def restore(data: bytearray) -> None:
    """Undo `transform`: compute the table again from the header and the symbols."""
    tables = find_tables(data)
    table = compute(data, tables) if tables is not None else None
    if tables is None or table is None:
        raise ValueError("not a transformed executable (no usable .gnu.hash)")
    data[tables.hash_offset:tables.hash_offset + tables.hash_size] = table
