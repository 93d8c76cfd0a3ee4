"""The guest image as shipped: one xz-compressed tar holding the manifest, kernel, initrd, cmdline
and the root *tree*, from which `unpack` writes the lz4 root image back, byte for byte.

Why: the lz4 squashfs boots fastest but hardly compresses further (87 MiB, 70 in an xz package);
the uncompressed tree under xz with the x86 branch filter is about half that, and less again
without the pointers that position-independent executables hold twice (vmimage.relocs) and the
symbol hash tables that are a function of their symbols (vmimage.gnuhash). The root
image is rewritten by vmimage.squashfs with the block size recorded here, and every artefact is
checked against the manifest's sha256 before anything is put in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import lzma
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from vmimage import gnuhash, locations, manifest, relocs, squashfs
from vmimage.errors import PackError

log = logging.getLogger(__name__)

FORMAT = 2  # 2: members may carry GNUHASH_HEADER
READABLE_FORMATS = (1, 2)
LAYOUT = "pack.json"
ROOT = "root"
RELOCS_HEADER = "PINNACE.relocs"  # the member's bytes went through vmimage.relocs.transform
GNUHASH_HEADER = "PINNACE.gnuhash"  # ... and through vmimage.gnuhash.transform
# LZMA2 over the whole tree in one window: dockerd, containerd and the shim share most of their
# Go packages, which a dictionary smaller than the tree cannot see across files.
DICT_SIZE = 192 << 20
BRANCH_FILTERS = {"x86_64": lzma.FILTER_X86}  # Python's lzma has no ARM64 filter


def pack_name(m: manifest.Manifest) -> str:
    return f"{m.name}-{m.version}-{m.arch}.tar.xz"


def xz_filters(arch: str, preset: int = 9 | lzma.PRESET_EXTREME) -> list[dict[str, int]]:
    chain: list[dict[str, int]] = [{"id": BRANCH_FILTERS[arch]}] if arch in BRANCH_FILTERS else []
    return [*chain, {"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": DICT_SIZE}]


def _tarinfo(name: str, entry: squashfs.Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = entry.mode, 0, 0, "root", "root", 0
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    else:
        info.size = entry.size
    return info


def pack_image(image_dir: Path, out: Path, preset: int = 9 | lzma.PRESET_EXTREME) -> Path:
    """Write the shipped form of the image in `image_dir` to `out` (a file, or a directory to
    name it in). The root tree comes from the image itself (unsquashfs), and is written back to
    an image and compared with the manifest first, so a pack that cannot reproduce it is never made."""
    m = manifest.load(image_dir)
    manifest.verify(image_dir, m)
    target = out / pack_name(m) if out.is_dir() else out
    if shutil.which("unsquashfs") is None:
        raise PackError("unsquashfs not found: install squashfs-tools")
    try:
        _pack(image_dir, m, target, preset)
    except OSError as exc:
        raise PackError(f"cannot pack {image_dir} into {target}", exc) from exc
    log.info("packed %s (%.1f MiB)", target, target.stat().st_size / 2**20)
    return target


def _pack(image_dir: Path, m: manifest.Manifest, target: Path, preset: int) -> None:
    block_size = _block_size_of(m.path_of(image_dir, "rootfs"))
    with tempfile.TemporaryDirectory(prefix="pinnace-pack-", dir=target.parent) as tmp:
        tree = Path(tmp) / "root"
        proc = subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(m.path_of(image_dir, "rootfs"))],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise PackError(f"cannot read the root image: {(proc.stderr or proc.stdout).strip()[-200:]}")
        rewritten = Path(tmp) / "check.img"
        written = squashfs.write_tree(tree, rewritten, block_size)
        if manifest.sha256_file(rewritten) != m.artifacts["rootfs"].sha256:
            raise PackError(f"{image_dir}: its root image was not written by this version of Pinnace "
                            "(rebuild it with `pinnace image build`)")
        rewritten.unlink()
        partial = Path(tmp) / "pack.partial"
        with lzma.open(partial, "wb", format=lzma.FORMAT_XZ, filters=xz_filters(m.arch, preset)) as xz, \
                tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            layout = json.dumps({"format": FORMAT, "block_size": block_size, "level": squashfs.DEFAULT_LEVEL,
                                 "tree_sha256": written.tree_sha256}, sort_keys=True).encode()
            _add_bytes(tar, LAYOUT, layout)
            _add_bytes(tar, manifest.MANIFEST, (image_dir / manifest.MANIFEST).read_bytes())
            for name in sorted({a.file for kind, a in m.artifacts.items() if kind != "rootfs"} | {"kernel.config"}):
                if (image_dir / name).is_file():
                    _add_bytes(tar, name, (image_dir / name).read_bytes())
            for entry in squashfs.walk(tree):
                name = f"{ROOT}/{entry.path}" if entry.path else ROOT
                info = _tarinfo(name, entry)
                if entry.kind == "file":
                    data = bytearray((tree / entry.path).read_bytes())
                    applied = {RELOCS_HEADER: relocs.transform(data), GNUHASH_HEADER: gnuhash.transform(data)}
                    info.pax_headers = {header: "1" for header, done in applied.items() if done}
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.addfile(info)
        partial.replace(target)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, squashfs.Entry(name, "file", 0o644, size=len(data))), io.BytesIO(data))


def _block_size_of(image: Path) -> int:
    with open(image, "rb") as f:
        head = f.read(squashfs.SUPERBLOCK.size)
    if len(head) < squashfs.SUPERBLOCK.size or squashfs.SUPERBLOCK.unpack(head)[0] != squashfs.MAGIC:
        raise PackError(f"{image}: not a squashfs image")
    return squashfs.SUPERBLOCK.unpack(head)[3]


def _root_entry(info: tarfile.TarInfo) -> squashfs.Entry:
    path = info.name[len(ROOT) + 1:] if info.name != ROOT else ""
    mode = stat.S_IMODE(info.mode)
    if info.isdir():
        return squashfs.Entry(path, "dir", mode)
    if info.issym():
        return squashfs.Entry(path, "symlink", 0o777, target=info.linkname)
    if info.isreg():
        return squashfs.Entry(path, "file", mode, size=info.size)
    raise PackError(f"{info.name}: unexpected member type in the image archive")


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (info := tar.next()) is not None:
        yield info


def unpack_image(pack: Path, out: Path) -> manifest.Manifest:
    """Write the image shipped in `pack` into `out`: the root image rebuilt from the tree and every
    artefact checked against the manifest before any replaces what `out` held."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pinnace-unpack-", dir=out.parent) as tmp:
            staged = Path(tmp)
            found = _unpack_into(pack, staged)
            for kind, art in found.artifacts.items():
                path = staged / art.file
                if not path.is_file() or path.stat().st_size != art.size or manifest.sha256_file(path) != art.sha256:
                    if kind != "rootfs":
                        raise PackError(f"{pack}: {art.file} does not match the manifest in it")
                    # Same tree (checked while writing), other bytes: another lz4 library version.
                    log.warning("the root image rebuilt here differs in bytes from the build's (lz4 %s); "
                                "its content matches the archive", lz4_version())
                    found = dataclasses.replace(found, artifacts={**found.artifacts, kind: manifest.describe(path)})
                    manifest.save(staged, found)
            out.mkdir(exist_ok=True)
            names = [*(a.file for a in found.artifacts.values()), "kernel.config"]
            for name in names:
                if (staged / name).exists():
                    (staged / name).replace(out / name)
            (staged / manifest.MANIFEST).replace(out / manifest.MANIFEST)  # last: it says the rest is there
            return found
    except (lzma.LZMAError, EOFError, tarfile.TarError, ValueError, KeyError, TypeError) as exc:
        raise PackError(f"{pack}: damaged image archive", exc) from exc
    except OSError as exc:
        raise PackError(f"cannot unpack {pack} into {out}", exc) from exc


def _unpack_into(pack: Path, staged: Path) -> manifest.Manifest:
    layout: dict[str, int] | None = None
    writer: squashfs.Writer | None = None
    with contextlib.ExitStack() as stack:
        tar = stack.enter_context(tarfile.open(fileobj=stack.enter_context(lzma.open(pack, "rb")), mode="r|"))
        for info in _members(tar):
            if info.name == LAYOUT:
                layout = json.loads(_read(tar, info))
                if layout.get("format") not in READABLE_FORMATS:
                    readable = ", ".join(map(str, READABLE_FORMATS))
                    raise PackError(f"{pack}: archive format {layout.get('format')} (this Pinnace reads {readable})")
            elif info.name == ROOT or info.name.startswith(ROOT + "/"):
                if layout is None:
                    raise PackError(f"{pack}: no {LAYOUT} before the root tree")
                if writer is None:
                    image = stack.enter_context(open(staged / manifest.load(staged).artifacts["rootfs"].file, "wb"))
                    block_size = squashfs.block_size_bytes(str(layout["block_size"]))
                    writer = squashfs.Writer(image, block_size, int(layout["level"]))
                writer.add(_root_entry(info), _root_data(tar, info) if info.isreg() else None)
            elif "/" in info.name or info.name in ("", ".", "..") or not info.isreg():
                raise PackError(f"{pack}: unexpected member {info.name!r}")
            else:
                (staged / info.name).write_bytes(_read(tar, info))
        if writer is None or layout is None:
            raise PackError(f"{pack}: no root tree in the archive")
        if writer.finish().tree_sha256 != layout.get("tree_sha256"):
            raise PackError(f"{pack}: the root tree in it is not the one it was packed with")
    return manifest.load(staged)


def image_dir_for(arch: str, env: Mapping[str, str] | None = None, package_dir: Path | None = None) -> Path:
    """The image directory to boot or show for `arch` (vmimage.locations' choice); when that is
    where an installer's archive unpacks and it has not been yet, it is unpacked there first."""
    directory = locations.default_image_dir(arch, env, package_dir)
    archive = locations.bundled_archive(arch, package_dir)
    if archive is not None and directory == locations.unpacked_dir(archive, env) and \
            not (directory / manifest.MANIFEST).is_file():
        log.info("unpacking the guest image shipped in %s (the first use after an install)", archive)
        unpack_image(archive, directory)
        _remove_older_unpacks(directory, arch)
    return directory


def _remove_older_unpacks(current: Path, arch: str) -> None:
    """An upgrade's archive replaced the one these were unpacked from: they are cache (~93 MiB
    each), and instances boot from their own staged copies, never from here."""
    for other in current.parent.glob(f"*-{arch}-*"):
        if other != current and other.is_dir() and (other / manifest.MANIFEST).is_file():
            log.info("removing %s, unpacked from an earlier installation's image", other)
            shutil.rmtree(other, ignore_errors=True)


def lz4_version() -> str:
    import lz4

    return str(getattr(lz4, "library_version_string", lambda: "?")())


def manifest_of(pack: Path) -> manifest.Manifest:
    """The manifest in the archive (read from the stream's first members)."""
    try:
        with lzma.open(pack, "rb") as xz, tarfile.open(fileobj=xz, mode="r|") as tar, \
                tempfile.TemporaryDirectory(prefix="pinnace-pack-") as tmp:
            for info in _members(tar):
                if info.name == manifest.MANIFEST:
                    (Path(tmp) / manifest.MANIFEST).write_bytes(_read(tar, info))
                    return manifest.load(Path(tmp))
    except (lzma.LZMAError, EOFError, tarfile.TarError) as exc:
        raise PackError(f"{pack}: damaged image archive", exc) from exc
    except OSError as exc:
        raise PackError(f"cannot read {pack}", exc) from exc
    raise PackError(f"{pack}: no manifest in the archive")


def _root_data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> BinaryIO:
    hashed, relocated = (info.pax_headers.get(h) == "1" for h in (GNUHASH_HEADER, RELOCS_HEADER))
    if not hashed and not relocated:
        return tar.extractfile(info) or io.BytesIO()
    data = bytearray(_read(tar, info))
    if hashed:
        gnuhash.restore(data)
    if relocated:
        relocs.restore(data)
    return io.BytesIO(data)


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    data = tar.extractfile(info)
    if data is None:
        raise PackError(f"{info.name}: not a file")
    return data.read()
