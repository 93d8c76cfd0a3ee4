"""A fresh Debian root (debootstrap, minbase) to install the built .deb into, as a user's machine
would: apt resolves the package's dependencies from Debian's mirror. /proc, /sys and /dev are
bind-mounted so the installed `pinnace start` can run QEMU there on the host's kernel.

The debootstrap result is cached as a tarball under the user cache dir (it does not change
between runs; apt refreshes the lists on every install).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmimage import locations

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BINDS = ("proc", "sys", "dev")
CHROOT_ENV = {"HOME": "/root", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "DEBIAN_FRONTEND": "noninteractive"}


def cached_tarball(suite: str = SUITE) -> Path:
    return locations.cache_dir() / "debootstrap" / f"{suite}-minbase.tar"


@dataclass
class DebRoot:
    root: Path
    mounted: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, suite: str = SUITE) -> DebRoot:
        tarball = cached_tarball(suite)
        if not tarball.is_file():
            staging = root.with_name(root.name + "-bootstrap")
            subprocess.run(["debootstrap", "--variant=minbase", suite, str(staging), MIRROR], check=True,
                           capture_output=True, timeout=900)
            tarball.parent.mkdir(parents=True, exist_ok=True)
            tmp = tarball.with_suffix(".tmp")
            subprocess.run(["tar", "-C", str(staging), "--numeric-owner", "-cf", str(tmp), "."], check=True)
            tmp.replace(tarball)
            shutil.rmtree(staging)
        root.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tarball)], check=True)
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
        deb_root = cls(root)
        for name in BINDS:
            target = root / name
            subprocess.run(["mount", "--bind", f"/{name}", str(target)], check=True)
            deb_root.mounted.append(target)
        return deb_root

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        full_env = {**CHROOT_ENV, **(env or {})}
        return subprocess.run(["chroot", str(self.root), "env", "-i", *[f"{k}={v}" for k, v in full_env.items()],
                               *argv], capture_output=True, text=True, timeout=timeout, check=check)

    def install(self, deb: Path) -> subprocess.CompletedProcess[str]:
        shutil.copy2(deb, self.root / "tmp" / deb.name)
        update = self.run("apt-get", "update", "-q", timeout=600)
        if update.returncode != 0:
            return update
        return self.run("apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}", timeout=900)

    def host_path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def processes(self) -> list[int]:
        """Processes whose root is this chroot (the agent, QEMU) — on the host's kernel."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "root") == str(self.root):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def destroy(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
        for target in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
        self.mounted.clear()
        if not any(p.is_mount() for p in (self.root / n for n in BINDS)):
            shutil.rmtree(self.root, ignore_errors=True)
