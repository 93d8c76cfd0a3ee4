"""The archive's transform of position-independent executables is exact and only taken where it is."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vmimage import relocs

# Debian's own PIEs on this host (ssh: a C program; its .rela.dyn has RELATIVE and symbol entries).
PIE = next((Path(p) for p in ("/usr/bin/ssh", "/bin/ls", "/usr/bin/ls") if Path(p).is_file()), None)


@pytest.mark.skipif(PIE is None, reason="no PIE binary found on this host")
def test_a_pie_round_trips_and_its_slots_are_zeroed() -> None:
    assert PIE is not None
    original = PIE.read_bytes()
    data = bytearray(original)
    assert relocs.transform(data)
    assert data != original and len(data) == len(original)
    relocs.restore(data)
    assert data == original


def test_files_it_does_not_apply_to_are_left_alone(tmp_path: Path) -> None:
    for sample in (b"", b"#!/bin/sh\necho hi\n", b"\x7fELF\x01\x01" + b"\0" * 100, b"\x7fELF\x02\x01" + b"\0" * 58):
        data = bytearray(sample)
        assert not relocs.transform(data)
        assert data == sample


@pytest.mark.skipif(PIE is None, reason="no PIE binary found on this host")
def test_a_slot_that_disagrees_with_its_addend_keeps_the_file_as_it_is(tmp_path: Path) -> None:
    """A PIE whose slot holds something else than the addend (a prelinked or patched one) could
    not be restored from the entries alone: it is not transformed."""
    assert PIE is not None
    data = bytearray(PIE.read_bytes())
    (offset, size), loads, machine = relocs._rela_and_loads(data)
    for i in range(0, size, relocs.RELA.size):
        where, info, addend = relocs.RELA.unpack_from(data, offset + i)
        if info == relocs.RELATIVE[machine]:
            slot = relocs._file_offset(loads, where)
            assert slot is not None
            struct.pack_into("<Q", data, slot, (addend + 1) & relocs.MASK)
            break
    before = bytes(data)
    assert not relocs.transform(data)
    assert data == before


def test_restore_refuses_a_file_without_relocations() -> None:
    with pytest.raises(ValueError):
        relocs.restore(bytearray(b"\x7fELF\x02\x01" + b"\0" * 100))
