"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmimage import locations


def _busybox_candidates() -> Iterator[Path]:
    found = shutil.which("busybox")
    if found:
        yield Path(found)
    yield from (Path("/bin/busybox"), Path("/usr/bin/busybox"))


def _cached_guest_busybox_deb() -> Path | None:
    """busybox-static as the image build fetched it: the guest's very busybox."""
    try:
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    debs = sorted(locations.cache_dir().glob(f"apt/*/debs/busybox-static_*_{arch.strip()}.deb"))
    return debs[-1] if debs else None


@pytest.fixture(scope="session")
def host_busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox to run the guest's shell scripts with on the host (the guest's own, if no other)."""
    for candidate in _busybox_candidates():
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    deb = _cached_guest_busybox_deb()
    if deb is None or shutil.which("dpkg-deb") is None:
        pytest.skip("no busybox on this host (install busybox-static, or build the image once)")
    dest = tmp_path_factory.mktemp("busybox")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest / "usr" / "bin" / "busybox"
