"""Command line for the image builder; `pinnace image ...` delegates here."""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from pathlib import Path

from vmimage import locations, manifest, pack
from vmimage.build import BUDGET_TOTAL, build_image, check_budget
from vmimage.errors import ImageError
from vmimage.recipe import ARCHES, DEFAULT_RECIPE, load_recipe

HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    return HOST_ARCH.get(platform.machine().lower(), "x86_64")


def add_arguments(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """`build` and `info`; the subparsers are returned so the app can add its own commands."""
    sub = parser.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="build the guest image (kernel, initrd, root image)")
    b.add_argument("--arch", choices=ARCHES, default=host_arch())
    b.add_argument("--out", type=Path, help="output directory (default: the user data dir)")
    b.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help=argparse.SUPPRESS)
    i = sub.add_parser("info", help="print the built image's manifest")
    i.add_argument("--arch", choices=ARCHES, default=host_arch())
    i.add_argument("--dir", type=Path, help="image directory (default: the user data dir)")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p = sub.add_parser("pack", help="write the image as shipped: one xz archive (the download)")
    p.add_argument("--arch", choices=ARCHES, default=host_arch())
    p.add_argument("--dir", type=Path, help="image directory (default: the user data dir)")
    p.add_argument("--out", type=Path, default=Path.cwd(), help="archive file or directory (default: here)")
    u = sub.add_parser("unpack", help="write a shipped image archive back into an image directory")
    u.add_argument("archive", type=Path)
    u.add_argument("--out", type=Path, help="image directory (default: the user data dir for its arch)")
    return sub


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def format_info(m: manifest.Manifest, directory: Path) -> str:
    lines = [
        f"image      {m.name} {m.version} ({m.arch}, Debian {m.suite})",
        f"directory  {directory}",
        f"kernel     {m.kernel_version}  {_mib(m.artifacts['kernel'].size)}",
        f"initrd     {_mib(m.artifacts['initrd'].size)}",
        f"rootfs     {_mib(m.artifacts['rootfs'].size)}",
        f"total      {_mib(m.boot_size)} (kernel + initrd + root image)",
        f"packages   {len(m.packages)}: " + ", ".join(f"{p['name']} {p['version']}" for p in m.packages[:6])
        + (" ..." if len(m.packages) > 6 else ""),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.image_command == "build":
        out = args.out or locations.build_image_dir(args.arch)
        result = build_image(load_recipe(args.recipe), args.arch, out, locations.cache_dir())
        print(format_info(result.manifest, out))
        print(f"built in {result.seconds:.0f} s")
        for problem in check_budget(result.manifest):
            print(f"note: over the size budget: {problem}")
        return 0
    if args.image_command == "pack":
        directory = args.dir or locations.default_image_dir(args.arch)
        packed = pack.pack_image(directory, args.out)
        print(f"{packed}  {_mib(packed.stat().st_size)} (budget {_mib(BUDGET_TOTAL)})")
        for problem in check_budget(manifest.load(directory), packed.stat().st_size):
            print(f"note: over the size budget: {problem}")
        return 0
    if args.image_command == "unpack":
        if not args.archive.is_file():
            raise pack.PackError(f"{args.archive}: no such file")
        out = args.out or locations.build_image_dir(pack.manifest_of(args.archive).arch)
        print(format_info(pack.unpack_image(args.archive, out), out))
        return 0
    directory = args.dir or pack.image_dir_for(args.arch)
    m = manifest.load(directory)
    print(m.to_json() if args.json else format_info(m, directory), end="\n" if not args.json else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmimage", description="Build the Pinnace guest image.")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return run(args)
    except ImageError as exc:
        print(f"pinnace: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pinnace: interrupted", file=sys.stderr)
        return 130
