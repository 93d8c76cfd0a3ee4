"""The initrd: static busybox and the stage-1 /init, written as a reproducible cpio."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

from vmimage import cpio
from vmimage.errors import RootfsError


def initrd_entries(busybox: bytes, init_script: bytes) -> list[cpio.Entry]:
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "ro", "rw", "newroot")]
    entries += [
        cpio.regular("bin/busybox", busybox, 0o755),
        cpio.regular("init", init_script, 0o755),
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/null", 1, 3, 0o666),
    ]
    return entries


def compress(data: bytes, method: str) -> bytes:
    if method == "none":
        return data
    if method == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if shutil.which("zstd") is None:
        raise RootfsError("zstd not found: install the zstd package")
    proc = subprocess.run(["zstd", "-19", "-q", "-c", "--no-progress"], input=data, capture_output=True)
    if proc.returncode != 0:
        raise RootfsError(f"zstd failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def build_initrd(busybox: Path, init_script: Path, output: Path, method: str) -> None:
    archive = cpio.write_newc(initrd_entries(busybox.read_bytes(), init_script.read_bytes()))
    output.write_bytes(compress(archive, method))
