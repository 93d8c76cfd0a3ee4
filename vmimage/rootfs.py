"""Assemble the guest's root tree from unpacked Debian packages and pack it as squashfs.

Only files the recipe names, plus exactly the shared libraries they need, go in; the result is
a read-only compressed image the guest mounts under a tmpfs overlay.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vmimage import squashfs
from vmimage.elf import is_elf, read_elf
from vmimage.errors import RootfsError
from vmimage.recipe import Recipe

log = logging.getLogger(__name__)

TRIPLET = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "data", "mnt", "root", "var/lib", "var/log",
              "var/empty", "etc/ssh", "usr/local/bin")
XZ_BCJ = {"x86_64": "x86", "aarch64": "arm"}


@dataclass
class Selection:
    """Relative paths chosen for the image and the packages they came from."""

    paths: set[str] = field(default_factory=set)
    packages: set[str] = field(default_factory=set)


class Tree:
    """An unpacked package tree, with symlinks resolved inside it (never on the host)."""

    def __init__(self, root: Path, owners: dict[str, str]) -> None:
        self.root, self.owners = root, owners
        for top, target in MERGED_USR.items():
            if not os.path.lexists(root / top):
                os.symlink(target, root / top)

    def lexists(self, rel: str) -> bool:
        return os.path.lexists(self.root / rel)

    def is_link(self, rel: str) -> bool:
        return (self.root / rel).is_symlink()

    def link_target(self, rel: str) -> str:
        """Where a symlink points, as a path relative to the tree root."""
        target = os.readlink(self.root / rel)
        base = PurePosixPath("/") if target.startswith("/") else PurePosixPath("/" + rel).parent
        return os.path.normpath(str(base / target)).lstrip("/")

    def canonical(self, rel: str) -> str:
        """Resolve symlinks in the directory part (so lib64/x resolves to usr/lib64/x)."""
        parts = PurePosixPath(rel).parts
        current = ""
        for i, part in enumerate(parts):
            current = f"{current}/{part}".lstrip("/")
            if i < len(parts) - 1:
                hops = 0
                while self.is_link(current):
                    current = self.link_target(current)
                    hops += 1
                    if hops > 20:
                        raise RootfsError(f"symlink loop at {current}")
        return current

    def glob(self, pattern: str) -> list[str]:
        directory, _, name = pattern.rpartition("/")
        base = self.root / self.canonical(directory + "/x").rpartition("/")[0]
        if not base.is_dir():
            return []
        prefix = str(base.relative_to(self.root))
        return sorted(f"{prefix}/{n}" for n in os.listdir(base) if fnmatch.fnmatch(n, name))


def _library_dirs(arch: str) -> list[str]:
    t = TRIPLET[arch]
    return [f"usr/lib/{t}", f"lib/{t}", "usr/lib", "lib", "usr/lib64", "lib64"]


def select_files(tree: Tree, recipe: Recipe, arch: str) -> Selection:
    """Everything the recipe includes, following symlinks and DT_NEEDED, as canonical paths."""
    sel = Selection()
    pending: list[str] = []
    for pattern in recipe.include_for(arch):
        pattern = pattern.replace("{triplet}", TRIPLET[arch])
        matches = tree.glob(pattern) if any(c in pattern for c in "*?[") else [tree.canonical(pattern)]
        matches = [m for m in matches if tree.lexists(m)]
        if not matches:
            raise RootfsError(f"{recipe.path.name}: rootfs.include: {pattern!r} matches nothing in the packages")
        pending.extend(matches)

    lib_dirs = _library_dirs(arch)
    while pending:
        rel = tree.canonical(pending.pop())
        if rel in sel.paths:
            continue
        sel.paths.add(rel)
        if rel in tree.owners:
            sel.packages.add(tree.owners[rel])
        if tree.is_link(rel):
            pending.append(tree.link_target(rel))
            continue
        path = tree.root / rel
        if not is_elf(path):
            continue
        info = read_elf(path.read_bytes())
        if info.interpreter:
            pending.append(info.interpreter.lstrip("/"))
        for lib in info.needed:
            found = next((f"{d}/{lib}" for d in lib_dirs if tree.lexists(tree.canonical(f"{d}/{lib}"))), None)
            if found is None:
                raise RootfsError(f"{rel} needs {lib}, which no selected package provides")
            pending.append(found)
    return sel


def copy_selection(tree: Tree, sel: Selection, dest: Path) -> None:
    for rel in sorted(sel.paths):
        src, dst = tree.root / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


def inittab(recipe: Recipe) -> str:
    lines = ["# Generated from image.toml [services]", f"::sysinit:{recipe.sysinit}"]
    lines += [f"::respawn:{command}" for command in recipe.respawn]
    lines += [f"::shutdown:{recipe.shutdown}", "::ctrlaltdel:/usr/sbin/init"]
    return "\n".join(lines) + "\n"


def add_guest_files(tree: Tree, recipe: Recipe, dest: Path) -> set[str]:
    """Pinnace's own files, links and the CA bundle; returns the packages the bundle came from."""
    for top, target in MERGED_USR.items():
        if not os.path.lexists(dest / top):
            os.symlink(target, dest / top)
    for d in EMPTY_DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "root").chmod(0o700)
    for link, target in recipe.links.items():
        path = dest / link
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            path.unlink()
        os.symlink(target, path)
    for rel, guest in recipe.files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(recipe.guest_file(guest.source), path)
        path.chmod(guest.mode)
    (dest / "etc/inittab").write_text(inittab(recipe))
    packages: set[str] = set()
    if recipe.ca_bundle:
        certs = tree.glob(f"{recipe.ca_bundle}/*.crt")
        if not certs:
            raise RootfsError(f"{recipe.path.name}: rootfs.ca_bundle: no certificates in {recipe.ca_bundle}")
        bundle = dest / "etc/ssl/certs/ca-certificates.crt"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        bundle.write_bytes(b"".join((tree.root / c).read_bytes().rstrip(b"\n") + b"\n" for c in certs))
        packages |= {tree.owners[c] for c in certs if c in tree.owners}
    return packages


def mksquashfs_argv(source: Path, output: Path, compression: str, block_size: str, arch: str) -> list[str]:
    """Reproducible squashfs: root-owned, fixed times, sorted, no xattrs (pure, for tests)."""
    argv = ["mksquashfs", str(source), str(output), "-noappend", "-quiet", "-no-progress",
            "-all-root", "-no-xattrs", "-mkfs-time", "0", "-all-time", "0", "-b", block_size,
            "-comp", compression, "-processors", str(os.cpu_count() or 1)]
    if compression == "xz":
        argv += ["-Xbcj", XZ_BCJ[arch]]
    elif compression == "zstd":
        argv += ["-Xcompression-level", "19"]
    elif compression == "lz4":
        argv += ["-Xhc"]  # high compression: smaller, and decompresses as fast
    elif compression == "none":
        argv[argv.index("-comp"):argv.index("-comp") + 2] = ["-noI", "-noD", "-noF", "-noX"]
    return argv


def pack_squashfs(source: Path, output: Path, recipe: Recipe, arch: str) -> None:
    """lz4 (the shipped choice) is written by Pinnace's own writer, so `vmimage unpack` can write
    the same bytes on any host; the other compressions (measurements only) by mksquashfs."""
    if recipe.compression == "lz4":
        squashfs.write_tree(source, output, squashfs.block_size_bytes(recipe.block_size))
        return
    if shutil.which("mksquashfs") is None:
        raise RootfsError("mksquashfs not found: install squashfs-tools")
    argv = mksquashfs_argv(source, output, recipe.compression, recipe.block_size, arch)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RootfsError(f"mksquashfs failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
