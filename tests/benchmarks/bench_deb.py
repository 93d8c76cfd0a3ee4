"""The .deb's figures: package and installed size, and cold/warm start of `pinnace --version` and
of the tray from the installed package, beside the same from the development venv in the same run.

    .venv/bin/python tests/benchmarks/bench_deb.py [--deb FILE] [--runs 5]

Needs root (debootstrap, chroot). "Cold" drops the page cache first (echo 3 > drop_caches).
The tray counts as started when it logs that it shows its window (offscreen: no panel here).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.debroot import CHROOT_ENV, DebRoot  # noqa: E402

TRAY_READY = b"showing the dashboard window instead"


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def tray_ready(argv: list[str], timeout: float = 60) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if TRAY_READY in line:
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                break
        raise RuntimeError(f"the tray did not start: {' '.join(argv)}")
    finally:
        proc.kill()
        proc.wait()


def median_of(runs: int, measure: Callable[[], float], cold: bool) -> float:
    values = []
    for _ in range(runs):
        if cold:
            drop_caches()
        values.append(measure())
    return statistics.median(values)


def build_deb(out: Path) -> Path:
    result = subprocess.run([sys.executable, str(ROOT / "installers/linux/build_deb.py"), "--out", str(out)],
                            check=True, capture_output=True, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deb", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deb-") as tmp:
        deb = args.deb or build_deb(Path(tmp))
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Installed-Size"], capture_output=True, text=True,
                                check=True).stdout
        installed_kib = int(fields.strip().split(":")[-1])
        root = DebRoot.create(Path(tmp) / "root")
        try:
            result = root.install(deb)
            if result.returncode != 0:
                print(result.stdout[-2000:], result.stderr[-2000:])
                return 1
            chroot = ["chroot", str(root.root), "env", "-i", *[f"{k}={v}" for k, v in CHROOT_ENV.items()]]
            offscreen = ["QT_QPA_PLATFORM=offscreen"]
            cases = {"pinnace --version": ([*chroot, "pinnace", "--version"],
                                           [str(ROOT / ".venv/bin/pinnace"), "--version"])}
            size = deb.stat().st_size / 2**20
            print(f"package   {deb.name}: {size:.1f} MiB, installed {installed_kib / 1024:.1f} MiB")
            print(f"{'measure':34} {'installed .deb':>15} {'dev venv':>10}")
            for name, (packaged, dev) in cases.items():
                for cold in (True, False):
                    a = median_of(args.runs, lambda argv=packaged: timed(argv), cold)
                    b = median_of(args.runs, lambda argv=dev: timed(argv), cold)
                    print(f"{name + (' (cold)' if cold else ' (warm)'):34} {a * 1000:13.0f} ms {b * 1000:8.0f} ms")
            tray_packaged = [*chroot, *offscreen, "pinnace-tray", "--name", "benchtray"]
            tray_dev = ["env", *offscreen, str(ROOT / ".venv/bin/pinnace-tray"), "--name", "benchtray"]
            for cold in (True, False):
                a = median_of(args.runs, lambda: tray_ready(tray_packaged), cold)
                b = median_of(args.runs, lambda: tray_ready(tray_dev), cold)
                print(f"{'tray up' + (' (cold)' if cold else ' (warm)'):34} {a * 1000:13.0f} ms {b * 1000:8.0f} ms")
        finally:
            root.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
