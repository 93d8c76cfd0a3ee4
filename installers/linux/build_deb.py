"""Build pinnace_<version>_<arch>.deb from this checkout and a built guest image.

    .venv/bin/python installers/linux/build_deb.py [--image-dir DIR] [--image-archive FILE] [--out DIR]

Why this layout and not PyInstaller: Debian's python3 already is on every Debian/Ubuntu desktop,
so the package bundles only the pure-Python and abi3 wheels (pinned to the versions in the build
venv) and takes the compiled crypto parts from Debian. That keeps it independent of the CPython
minor version, starts as fast as a plain Python program (no unpacking), and is ~40 MB smaller than
a frozen build carrying its own interpreter. PySide6 is pruned to what the tray loads.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # installers/: shared.py
sys.path.insert(0, str(ROOT))

import debian_files as files  # noqa: E402
import qt_prune  # noqa: E402
from shared import project_version  # noqa: E402

from vmimage import manifest as image_manifest  # noqa: E402
from vmimage import pack as image_pack  # noqa: E402

log = logging.getLogger("build-deb")

# The newest glibc a bundled wheel may need: Debian 12's 2.36 (pip does not expand a manylinux
# tag to older ones by itself, so every accepted tag is listed).
GLIBC_MINORS = range(17, 37)


class BuildError(Exception):
    """A step of the package build failed; the message says which."""


def runtime_closure(root: str = "pinnace") -> dict[str, str]:
    """name -> installed version of every runtime dependency of `root` (no extras), from the
    build venv's metadata, so the package carries exactly the versions the tests ran with."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    queue = [root]
    while queue:
        name = queue.pop()
        dist = metadata.distribution(name)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            key = req.name.lower().replace("_", "-")
            if key not in seen:
                seen[key] = metadata.version(req.name)
                queue.append(req.name)
    return seen


def bundled_requirements(closure: dict[str, str]) -> list[str]:
    skip = {name.lower() for name in files.SYSTEM_PYTHON_PACKAGES}
    return sorted(f"{name}=={version}" for name, version in closure.items() if name not in skip)


def pip_install_argv(target: Path, requirements: list[str], machine: str) -> list[str]:
    """Only abi3 and pure wheels for the oldest supported CPython: the result runs on any newer one."""
    return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--no-compile", "--target", str(target), "--only-binary=:all:",
            *[arg for minor in GLIBC_MINORS for arg in ("--platform", f"manylinux_2_{minor}_{machine}")],
            "--implementation", "cp", "--python-version", "3.11",
            "--abi", "abi3", "--abi", "none", *requirements]


def run(argv: list[str], **kw: object) -> None:
    log.info("$ %s", " ".join(argv))
    try:
        subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"`{' '.join(argv[:4])} …` failed: {exc}") from exc


def build_wheel(work: Path) -> Path:
    wheels = work / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
         "-w", str(wheels), str(ROOT)])
    found = sorted(wheels.glob("pinnace-*.whl"))
    if not found:
        raise BuildError("pip wheel produced no pinnace wheel")
    return found[-1]


def stage_python(stage: Path, machine: str, work: Path) -> None:
    lib = stage / files.LIB_DIR.lstrip("/")
    lib.mkdir(parents=True)
    wheel = build_wheel(work)
    run(pip_install_argv(lib, [*bundled_requirements(runtime_closure()), str(wheel)], machine))
    # pip --target drops the project's data-files (icons) under lib/share and console scripts under lib/bin.
    for extra in ("bin", "share"):
        qt_prune.remove(lib / extra)
    for cache in lib.rglob("__pycache__"):
        shutil.rmtree(cache)
    qt_prune.prune(lib)
    strip_libraries(lib)


def stage_image(stage: Path, image_dir: Path, arch: str, archive: Path | None = None) -> None:
    """The guest image as its download form (`vmimage pack`): unpacked into the user's cache on
    first use. `archive` is one packed already from `image_dir` (packing takes minutes)."""
    try:
        m = image_manifest.load(image_dir)
        image_manifest.verify(image_dir, m)
    except image_manifest.ManifestError as exc:
        raise BuildError(f"no usable guest image in {image_dir}: {exc} (run `pinnace image build` first)") from exc
    dest = stage / files.IMAGE_ROOT.lstrip("/")
    dest.mkdir(parents=True)
    try:
        if archive is None:
            archive = image_pack.pack_image(image_dir, dest / image_pack.pack_name(m))
        elif image_pack.manifest_of(archive).artifacts != m.artifacts:
            raise BuildError(f"{archive} is not the image in {image_dir} packed")
        else:
            shutil.copy2(archive, dest / image_pack.pack_name(m))
    except image_pack.PackError as exc:
        raise BuildError(str(exc)) from exc
    (dest / image_pack.pack_name(m)).chmod(0o644)


def stage_desktop(stage: Path) -> None:
    share = stage / "usr/share"
    bin_dir = stage / "usr/bin"
    bin_dir.mkdir(parents=True)
    for name, module in (("pinnace", "app.cli"), ("pinnace-tray", "app.tray_main")):
        (bin_dir / name).write_text(files.launcher(module))
        (bin_dir / name).chmod(0o755)
    icons = ROOT / "resources" / "icons"
    # app/tray/icon_files.py looks in <sys.prefix>/share/pinnace/resources for installed layouts.
    state_icons = share / "pinnace/resources/icons"
    state_icons.mkdir(parents=True)
    for svg in icons.glob("*.svg"):
        shutil.copy2(svg, state_icons / svg.name)
    app_icon = share / "icons/hicolor/scalable/apps"
    app_icon.mkdir(parents=True)
    shutil.copy2(icons / "pinnace.svg", app_icon / "pinnace.svg")
    (share / "applications").mkdir()
    shutil.copy2(ROOT / "resources/pinnace.desktop", share / "applications/pinnace.desktop")
    man = share / "man/man1"
    man.mkdir(parents=True)
    for command in files.COMMANDS:
        with gzip.GzipFile(man / f"{command}.1.gz", "wb", mtime=source_date()) as gz:
            gz.write(files.manpage(command, project_version()).encode())
    doc = share / "doc/pinnace"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(files.copyright_file())
    # A native package (no Debian revision): the changelog is changelog.gz.
    with gzip.GzipFile(doc / "changelog.gz", "wb", mtime=source_date()) as gz:
        gz.write(files.changelog(project_version(), email.utils.formatdate(source_date())).encode())
    overrides = share / "lintian/overrides"
    overrides.mkdir(parents=True)
    (overrides / "pinnace").write_text(files.lintian_overrides())


def stage_control(stage: Path, deb_arch: str) -> None:
    debian = stage / "DEBIAN"
    debian.mkdir()
    for name, text in (("postinst", files.postinst()), ("prerm", files.prerm()), ("postrm", files.postrm())):
        (debian / name).write_text(text)
        (debian / name).chmod(0o755)
    sums = []
    for path in sorted(p for p in stage.rglob("*") if p.is_file() and not p.is_symlink() and "DEBIAN" not in p.parts):
        sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {path.relative_to(stage)}\n")  # noqa: S324
    (debian / "md5sums").write_text("".join(sums))
    installed = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file()) // 1024
    info = files.PackageInfo(version=project_version(), deb_arch=deb_arch, installed_kib=installed)
    (debian / "control").write_text(files.control(info))


def source_date() -> int:
    """The commit's time: wheels carry 1980 zip dates, which dpkg and lintian call ancient."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True, text=True)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


def strip_libraries(lib: Path) -> None:
    """Debug symbols some wheels keep (ICU, charset_normalizer) are dead weight in a package."""
    libraries = [p for p in lib.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    run(["strip", "--strip-unneeded", *map(str, libraries)])


def normalise(stage: Path) -> None:
    """Dirs 0755; the /usr/bin launchers 0755 and everything else 0644 (wheels carry stray exec
    bits) whatever umask the build met; every mtime the commit's."""
    when = source_date()
    for path in sorted(stage.rglob("*"), reverse=True):
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.parent == stage / "usr/bin" else 0o644)
        os.utime(path, (when, when))


def build(image_dir: Path, out: Path, arch: str = "x86_64", compression: str = "xz",
          archive: Path | None = None) -> Path:
    deb_arch = files.DEB_ARCH[arch]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pinnace-deb-") as tmp:
        work = Path(tmp)
        stage = work / "stage"
        stage_python(stage, arch, work)
        stage_image(stage, image_dir, arch, archive)
        stage_desktop(stage)
        normalise(stage)
        stage_control(stage, deb_arch)
        deb = out / f"pinnace_{project_version()}_{deb_arch}.deb"
        run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(stage), str(deb)],
            env={**os.environ, "SOURCE_DATE_EPOCH": str(source_date())})
    log.info("built %s (%.1f MiB)", deb, deb.stat().st_size / 2**20)
    return deb


def main(argv: list[str] | None = None) -> int:
    from vmimage import locations

    parser = argparse.ArgumentParser(prog="build_deb.py", description="Build the Pinnace .deb.")
    parser.add_argument("--arch", default="x86_64", choices=sorted(files.DEB_ARCH))
    parser.add_argument("--image-dir", type=Path, help="built guest image (default: the user's image dir)")
    parser.add_argument("--image-archive", type=Path, help="that image already packed (`pinnace image pack`)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--compression", default="xz", choices=("xz", "zstd", "gzip", "none"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="build-deb: %(message)s")
    image_dir = args.image_dir or locations.build_image_dir(args.arch)
    try:
        print(build(image_dir, args.out, args.arch, args.compression, args.image_archive))
    except BuildError as exc:
        print(f"build-deb: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
