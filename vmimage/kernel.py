"""Build the guest kernel from Debian's linux-source package with a committed config fragment.

The fragment is applied on top of `make tinyconfig`; every line of it must survive
`olddefconfig` (a silently dropped option is an error). Our own built-in code (EXTRA_SOURCES: the
replay of host file changes as fsnotify events, vmimage/kernel/pinnace_fsnotify.c) is copied into
the tree and linked in. Builds are cached by a hash of their inputs, so only a changed source,
fragment, extra source or toolchain recompiles.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmimage.errors import KernelBuildError

log = logging.getLogger(__name__)

BUILDER_VERSION = "1"
KERNEL_ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}
KERNEL_TARGET = {"x86_64": ("bzImage", "arch/x86/boot/bzImage"), "aarch64": ("Image.gz", "arch/arm64/boot/Image.gz")}
CROSS_COMPILE = {"aarch64": "aarch64-linux-gnu-", "x86_64": "x86_64-linux-gnu-"}
# tree path -> (our file, the Makefile line that builds it in)
EXTRA_SOURCES = {
    "fs/notify/pinnace_fsnotify.c": (Path(__file__).parent / "kernel" / "pinnace_fsnotify.c",
                                     "obj-y += pinnace_fsnotify.o"),
}
REPRODUCIBLE_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 1970",
    "KBUILD_BUILD_USER": "pinnace",
    "KBUILD_BUILD_HOST": "pinnace",
    "KBUILD_BUILD_VERSION": "1",
}


@dataclass(frozen=True)
class KernelBuild:
    image: Path
    config: Path
    release: str


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X -> value; `# CONFIG_X is not set` -> 'n'."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"(CONFIG_\w+)=(.*)", line):
            values[m.group(1)] = m.group(2)
        elif m := re.match(r"# (CONFIG_\w+) is not set", line):
            values[m.group(1)] = "n"
    return values


def config_mismatches(fragment: str, config: str) -> list[str]:
    """Options the fragment asks for that the final config does not have."""
    wanted, have = parse_config(fragment), parse_config(config)
    return [f"{k}={v} (got {have.get(k, 'unset')})" for k, v in wanted.items() if have.get(k, "n") != v]


def cache_key(source_sha256: str, fragment: bytes, arch: str, toolchain: str, extra: bytes = b"") -> str:
    h = hashlib.sha256()
    for part in (BUILDER_VERSION, source_sha256, arch, toolchain):
        h.update(part.encode() + b"\0")
    h.update(fragment)
    h.update(extra)
    return h.hexdigest()[:24]


def extra_sources_digest() -> bytes:
    """What EXTRA_SOURCES contribute to the cache key: each tree path, Makefile line and content."""
    h = hashlib.sha256()
    for target, (source, make_line) in sorted(EXTRA_SOURCES.items()):
        h.update(f"{target}\0{make_line}\0".encode() + source.read_bytes())
    return h.digest()


def add_extra_sources(tree: Path) -> None:
    """Copy EXTRA_SOURCES into the tree and add each one's line to its directory's Makefile once."""
    for target, (source, make_line) in EXTRA_SOURCES.items():
        shutil.copyfile(source, tree / target)
        makefile = tree / Path(target).parent / "Makefile"
        text = makefile.read_text()
        if make_line not in text.splitlines():
            makefile.write_text(text.rstrip("\n") + "\n" + make_line + "\n")


def cross_prefix(arch: str, host_machine: str) -> str:
    return "" if arch == host_machine else CROSS_COMPILE[arch]


def toolchain_id(prefix: str) -> str:
    try:
        out = subprocess.run([f"{prefix}gcc", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise KernelBuildError(f"no C compiler {prefix}gcc (install build-essential"
                               f"{' gcc-aarch64-linux-gnu' if prefix else ''})", exc) from exc
    return out.splitlines()[0]


class KernelBuilder:
    def __init__(self, cache_dir: Path, jobs: int | None = None) -> None:
        self.cache_dir = cache_dir
        self.jobs = jobs or os.cpu_count() or 1

    def build(self, source_deb: Path, source_sha256: str, fragment: Path, arch: str) -> KernelBuild:
        prefix = cross_prefix(arch, os.uname().machine)
        key = cache_key(source_sha256, fragment.read_bytes(), arch, toolchain_id(prefix), extra_sources_digest())
        done = self.cache_dir / "kernels" / key
        image_name = KERNEL_TARGET[arch][0]
        if (done / image_name).is_file() and (done / "release").is_file():
            log.info("kernel: cached build %s", key)
            return KernelBuild(done / image_name, done / "config", (done / "release").read_text().strip())

        tree = self._source_tree(source_deb, source_sha256, arch)
        add_extra_sources(tree)
        make = ["make", "-C", str(tree), f"ARCH={KERNEL_ARCH[arch]}"]
        if prefix:
            make.append(f"CROSS_COMPILE={prefix}")
        env = {**os.environ, **REPRODUCIBLE_ENV}
        self._run([*make, "tinyconfig"], env, "make tinyconfig")
        self._run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(tree),
                   str(tree / ".config"), str(fragment)], {**env, "ARCH": KERNEL_ARCH[arch]},
                  "merging the config fragment", cwd=tree)
        self._run([*make, "olddefconfig"], env, "make olddefconfig")
        missing = config_mismatches(fragment.read_text(), (tree / ".config").read_text())
        if missing:
            raise KernelBuildError(f"{fragment.name}: options dropped by kconfig (unmet dependencies): "
                                   + ", ".join(missing[:8]))
        log.info("kernel: compiling %s with -j%d (several minutes)", arch, self.jobs)
        self._run([*make, f"-j{self.jobs}", KERNEL_TARGET[arch][0]], env, "kernel compile", quiet=True)
        release = self._run([*make, "-s", "kernelrelease"], env, "make kernelrelease").strip()

        staging = done.with_name(key + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copyfile(tree / KERNEL_TARGET[arch][1], staging / image_name)
        shutil.copyfile(tree / ".config", staging / "config")
        (staging / "release").write_text(release + "\n")
        shutil.rmtree(done, ignore_errors=True)
        staging.rename(done)
        return KernelBuild(done / image_name, done / "config", release)

    def _source_tree(self, source_deb: Path, source_sha256: str, arch: str) -> Path:
        # One tree per arch: builds are in-tree, and switching ARCH in one tree rebuilds everything.
        work = self.cache_dir / "kernel-src" / f"{source_sha256[:16]}-{arch}"
        marker = work / ".unpacked"
        if marker.is_file():
            return Path(marker.read_text().strip())
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        self._run(["dpkg-deb", "-x", str(source_deb), str(work / "pkg")], None, "unpacking the kernel source")
        tarballs = sorted((work / "pkg/usr/src").glob("linux-source-*.tar.*"))
        if not tarballs:
            raise KernelBuildError(f"{source_deb.name} holds no linux-source tarball")
        self._run(["tar", "-C", str(work), "-xf", str(tarballs[0])], None, "extracting the kernel source")
        shutil.rmtree(work / "pkg")
        trees = [p for p in work.iterdir() if p.is_dir() and p.name.startswith("linux-source")]
        if len(trees) != 1:
            raise KernelBuildError(f"unexpected kernel source layout in {work}")
        marker.write_text(str(trees[0]))
        return trees[0]

    @staticmethod
    def _run(argv: list[str], env: dict[str, str] | None, what: str, cwd: Path | None = None,
             quiet: bool = False) -> str:
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()][-3:]
            raise KernelBuildError(f"{what} failed: {' | '.join(tail)}")
        return proc.stdout
