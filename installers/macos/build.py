"""Build Pinnace.app and Pinnace-<version>-<arch>.dmg on a Mac (see installers/README.md).

    .venv/bin/python installers/macos/build.py [--images DIR] [--identity "Developer ID Application: ..."]
                                               [--notary-profile PROFILE] [--no-dmg]
    .venv/bin/python installers/macos/build.py --sign-qemu PATH [--identity ...]

Steps: check both guest images (size and sha256 against their manifests), render the .icns from
resources/icons/pinnace.svg (Qt, then iconutil), run PyInstaller with pinnace.spec, check the
built Info.plist, write the LaunchAgent beside the app, verify the signature, make the .dmg
(hdiutil), optionally sign and notarise it. `--sign-qemu` only signs a QEMU binary with
qemu.entitlements (for a QEMU you built yourself; Homebrew's is signed already).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # installers/: shared.py
import recipe  # this directory is sys.path[0] when run as a script
from shared import render_png  # noqa: E402

from vmimage import locations
from vmimage import manifest as image_manifest

HERE = Path(__file__).resolve().parent
ROOT = recipe.ROOT
SVG = ROOT / "resources" / "icons" / "pinnace.svg"
QEMU_ENTITLEMENTS = HERE / "qemu.entitlements"


class BuildError(Exception):
    """A build step failed; the message says which."""


def run(argv: list[str | Path], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    try:
        subprocess.run([str(a) for a in argv], check=True, env=env)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"{argv[0]} failed: {exc}") from exc


def check_images(root: Path) -> None:
    """Both arches, complete and matching their manifests: a bundle with a damaged image is useless."""
    for arch in recipe.IMAGE_ARCHES:
        directory = root / arch
        try:
            manifest = image_manifest.load(directory)
            image_manifest.verify(directory, manifest)
        except image_manifest.ManifestError as exc:
            raise BuildError(f"{exc} (build it on Linux with `pinnace image build --arch {arch}`)") from exc
        if manifest.arch != arch:
            raise BuildError(f"{directory}: the manifest says arch {manifest.arch}, expected {arch}")
        for kind, artifact in manifest.artifacts.items():
            if image_manifest.sha256_file(directory / artifact.file) != artifact.sha256:
                raise BuildError(f"{directory / artifact.file}: sha256 differs from the manifest ({kind})")


def make_icns(work: Path) -> Path:
    iconset = work / "pinnace.iconset"
    shutil.rmtree(iconset, ignore_errors=True)
    iconset.mkdir(parents=True)
    for name, size in recipe.iconset_sizes().items():
        (iconset / name).write_bytes(render_png(SVG, size))
    icns = work / recipe.ICON_FILE
    run(["iconutil", "--convert", "icns", "--output", icns, iconset])
    return icns


def min_macos() -> str | None:
    """PySide6's wheels set the floor (6.12's are macosx_14_0); read it from the installed wheel."""
    for dist in ("PySide6-Essentials", "PySide6"):
        try:
            wheel = importlib.metadata.distribution(dist).read_text("WHEEL") or ""
        except importlib.metadata.PackageNotFoundError:
            continue
        tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
        return recipe.min_macos_from_wheel_tags(tags)
    return None


def check_bundle(app: Path, expected: dict[str, object]) -> None:
    """PyInstaller merges our keys over its own; make sure ours survived, and the payload is there."""
    built = plistlib.loads((app / "Contents" / "Info.plist").read_bytes())
    wrong = {key: built.get(key) for key, value in expected.items() if built.get(key) != value}
    if wrong:
        raise BuildError(f"{app}/Contents/Info.plist: unexpected values {wrong}")
    needed = [app / "Contents" / "MacOS" / name for name in (recipe.TRAY_EXE, recipe.CLI_EXE)]
    needed += [app / "Contents" / "Resources" / recipe.IMAGES_DEST / a / "manifest.json" for a in recipe.IMAGE_ARCHES]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise BuildError(f"missing from the bundle: {', '.join(missing)}")


def make_dmg(app: Path, dist: Path, work: Path, version: str, identity: str | None) -> Path:
    """A compressed image with the app and an /Applications link to drag it onto."""
    dmg = dist / f"{recipe.APP_NAME}-{version}-{platform.machine()}.dmg"
    staging = work / "dmg"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run(["ditto", app, staging / app.name])  # keeps symlinks, modes and signatures
    (staging / "Applications").symlink_to("/Applications")
    dmg.unlink(missing_ok=True)
    run(["hdiutil", "create", "-volname", f"{recipe.APP_NAME} {version}", "-srcfolder", staging,
         "-fs", "HFS+", "-format", "UDZO", "-ov", dmg])
    if identity:
        run(["codesign", "--force", "--timestamp", "--sign", identity, dmg])
    return dmg


def notarise(dmg: Path, profile: str) -> None:
    run(["xcrun", "notarytool", "submit", dmg, "--keychain-profile", profile, "--wait"])
    run(["xcrun", "stapler", "staple", dmg])


def sign_qemu(binary: Path, identity: str | None) -> None:
    """Sign a QEMU with the hypervisor (and JIT) entitlements; hardened runtime with a real identity."""
    argv: list[str | Path] = ["codesign", "--force", "--sign", identity or "-", "--entitlements", QEMU_ENTITLEMENTS]
    if identity:
        argv += ["--options", "runtime", "--timestamp"]
    run([*argv, binary])
    run(["codesign", "--display", "--entitlements", "-", binary])


def build(images: Path, identity: str | None, notary_profile: str | None, with_dmg: bool) -> None:
    if importlib.util.find_spec("PyInstaller") is None:
        raise BuildError("PyInstaller is missing: .venv/bin/python -m pip install pyinstaller")
    version = recipe.project_version()
    work = ROOT / "build" / "macos"
    dist = ROOT / "dist" / "macos"
    work.mkdir(parents=True, exist_ok=True)
    check_images(images)
    icns = make_icns(work)
    floor = min_macos()
    env = {
        **os.environ,
        "PINNACE_IMAGES": str(images),
        "PINNACE_ICNS": str(icns),
        "PINNACE_MIN_MACOS": floor or "",
        "PINNACE_CODESIGN_IDENTITY": identity or "",
    }
    run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--distpath", dist,
         "--workpath", work / "pyinstaller", HERE / "pinnace.spec"], env=env)
    app = dist / f"{recipe.APP_NAME}.app"
    check_bundle(app, recipe.info_plist(version, floor))
    (dist / recipe.launch_agent_file_name()).write_bytes(recipe.launch_agent())
    run(["codesign", "--verify", "--deep", "--strict", "--verbose=2", app])
    print(f"built {app}")
    if with_dmg:
        dmg = make_dmg(app, dist, work, version, identity)
        if notary_profile:
            notarise(dmg, notary_profile)
        print(f"built {dmg}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build Pinnace.app and its .dmg (macOS only).")
    parser.add_argument("--images", type=Path, default=locations.image_root(),
                        help="directory holding aarch64/ and x86_64/ built images (default: %(default)s)")
    parser.add_argument("--identity", default=os.environ.get("PINNACE_CODESIGN_IDENTITY") or None,
                        help="codesign identity (default: ad-hoc signature, no hardened runtime)")
    parser.add_argument("--notary-profile", help="notarytool keychain profile: notarise and staple the .dmg")
    parser.add_argument("--no-dmg", action="store_true", help="stop after Pinnace.app")
    parser.add_argument("--sign-qemu", type=Path, metavar="PATH", help="only sign this QEMU binary, then exit")
    args = parser.parse_args(argv)
    if sys.platform != "darwin":
        print("build.py: this builds on macOS only (PyInstaller, iconutil, codesign, hdiutil)", file=sys.stderr)
        return 2
    if args.notary_profile and not args.identity:
        parser.error("--notary-profile needs --identity (notarisation requires a Developer ID signature)")
    try:
        if args.sign_qemu:
            sign_qemu(args.sign_qemu, args.identity)
        else:
            build(args.images, args.identity, args.notary_profile, not args.no_dmg)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
