"""The archive's transform of GNU symbol hash tables is exact and only taken where it is."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest

from vmimage import gnuhash

# Debian's own ELF files on this host, each with a .gnu.hash table (an executable and a library
# that exports thousands of symbols).
SAMPLES = [Path(p) for p in ("/usr/bin/ssh", "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
                             "/usr/lib/aarch64-linux-gnu/libcrypto.so.3") if Path(p).is_file()]


@pytest.mark.skipif(not SAMPLES, reason="no ELF file with a .gnu.hash found on this host")
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_a_table_round_trips_and_is_zeroed_after_its_header(sample: Path) -> None:
    original = sample.read_bytes()
    tables = gnuhash.find_tables(original)
    assert tables is not None
    data = bytearray(original)
    assert gnuhash.transform(data)
    assert len(data) == len(original)
    start, end = tables.hash_offset, tables.hash_offset + tables.hash_size
    assert data[start:start + gnuhash.HEADER.size] == original[start:start + gnuhash.HEADER.size]
    assert not any(data[start + gnuhash.HEADER.size:end]) and any(original[start + gnuhash.HEADER.size:end])
    assert data[:start] == original[:start] and data[end:] == original[end:]
    gnuhash.restore(data)
    assert data == original


@pytest.mark.skipif(not SAMPLES, reason="no ELF file with a .gnu.hash found on this host")
def test_the_transformed_file_compresses_smaller() -> None:
    original = max(SAMPLES, key=lambda p: p.stat().st_size).read_bytes()
    data = bytearray(original)
    assert gnuhash.transform(data)
    assert len(lzma.compress(bytes(data))) < len(lzma.compress(original))


def test_files_it_does_not_apply_to_are_left_alone() -> None:
    for sample in (b"", b"#!/bin/sh\necho hi\n", b"\x7fELF\x01\x01" + b"\0" * 100, b"\x7fELF\x02\x01" + b"\0" * 58):
        data = bytearray(sample)
        assert not gnuhash.transform(data)
        assert data == sample
        with pytest.raises(ValueError):
            gnuhash.restore(bytearray(sample))


@pytest.mark.skipif(not SAMPLES, reason="no ELF file with a .gnu.hash found on this host")
def test_a_table_that_its_symbols_do_not_give_back_keeps_the_file_as_it_is() -> None:
    """A table another linker laid out differently (or a patched one) could not be restored
    from the symbols alone: the file is not transformed."""
    data = bytearray(SAMPLES[0].read_bytes())
    tables = gnuhash.find_tables(data)
    assert tables is not None
    last_chain = tables.hash_offset + tables.hash_size - 4
    value, = struct.unpack_from("<I", data, last_chain)
    struct.pack_into("<I", data, last_chain, value ^ 0x100)
    changed = bytes(data)
    assert not gnuhash.transform(data)
    assert data == changed


def test_gnu_hash_matches_the_published_values() -> None:
    """The ELF gABI's GNU hash (djb2 modulo 2**32), as the dynamic linker computes it."""
    assert gnuhash.gnu_hash(b"") == 0x00001505
    assert gnuhash.gnu_hash(b"printf") == 0x156B2BB8
    assert gnuhash.gnu_hash(b"exit") == 0x7C967E3F
    assert gnuhash.gnu_hash(b"syscall") == 0xBAC212A0
