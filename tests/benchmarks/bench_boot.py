"""Boot, stop and reset timings, memory and image sizes, each beside the floor measured in the
same run (this machine is noisy). Prints a table; not a test.

    .venv/bin/python tests/benchmarks/bench_boot.py [--rounds 3] [--settle 30]
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QEMU = Path("/usr/bin/qemu-system-x86_64")
sys.path.insert(0, str(ROOT))

from hypervisor.spec import PROBE_MARKER, probe_argv  # noqa: E402
from vmimage import locations, manifest  # noqa: E402


def pinnace(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"pinnace {' '.join(args)} failed: {proc.stderr.strip()}")
    return time.monotonic() - t, proc


def stage_times(serial: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    for line in serial.read_text(errors="replace").splitlines():
        parts = line.split()
        if parts[:1] == ["PINNACE-STAGE"] and len(parts) == 3:
            times[parts[1]] = float(parts[2])
        elif parts[:1] == ["PINNACE-READY"] and len(parts) == 2:
            times["ready"] = float(parts[1])
    return times


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds idle before reading memory")
    args = parser.parse_args()

    image_dir = locations.default_image_dir("x86_64")
    m = manifest.load(image_dir)
    kernel, initrd = m.path_of(image_dir, "kernel"), m.path_of(image_dir, "initrd")
    home = Path(tempfile.mkdtemp(prefix="pinnace-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINNACE_")}
    env.update(PINNACE_HOME=str(home), PINNACE_IMAGE_DIR=str(image_dir))

    floor, start, stop, stages = [], [], [], []
    accel = "tcg"
    pinnace(env, "start")  # first boot formats the data disk; measured separately below as reset
    status = json.loads(pinnace(env, "status", "--json")[1].stdout)
    accel = status["accel"]
    pinnace(env, "stop")
    for _ in range(args.rounds):
        t0 = time.monotonic()
        # The floor: QEMU start -> kernel -> trivial init -> power off (whole process lifetime).
        probe = subprocess.run(probe_argv(QEMU, "x86_64", accel, kernel, initrd, "linux"),
                               capture_output=True, text=True, timeout=60)
        floor.append(time.monotonic() - t0)
        assert PROBE_MARKER in probe.stdout, probe.stderr
        seconds, _ = pinnace(env, "start")
        start.append(seconds)
        stages.append(stage_times(Path(home) / "logs" / "default" / "serial.log"))
        seconds, _ = pinnace(env, "stop")
        stop.append(seconds)

    resets = []
    pinnace(env, "start")
    for _ in range(args.rounds):
        seconds, _ = pinnace(env, "reset", "--yes")
        resets.append(seconds)
    time.sleep(args.settle)
    status = json.loads(pinnace(env, "status", "--json")[1].stdout)
    qemu_rss = rss_mib(status["qemu_pid"])
    meminfo = pinnace(env, "ssh", "--", "cat", "/proc/meminfo")[1].stdout
    mem = {line.split(":")[0]: int(line.split()[1]) // 1024 for line in meminfo.splitlines() if ":" in line}
    pinnace(env, "stop")

    print(f"\nPinnace boot benchmark — accelerator {accel}, {args.rounds} rounds, image {m.version}")
    print(f"  floor (QEMU + kernel + trivial init, powers off)  {fmt(floor)}")
    print(f"  pinnace start -> engine ready                     {fmt(start)}")
    print(f"  pinnace stop -> QEMU exited                       {fmt(stop)}")
    print(f"  pinnace reset -> engine ready again               {fmt(resets)}")
    med = {k: statistics.median(s[k] for s in stages if k in s) for k in ("init", "data", "engine", "ready")}
    print("  guest timeline (median uptime, s): " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    engine_s = med["ready"] - med["engine"]
    print(f"  engine start (dockerd+containerd) {engine_s:.1f} s of {med['ready']:.1f} s guest uptime")
    print(f"  QEMU RSS {args.settle:.0f} s after ready: {qemu_rss:.0f} MiB; guest MemTotal {mem.get('MemTotal')} MiB, "
          f"MemAvailable {mem.get('MemAvailable')} MiB")
    sizes = {k: m.artifacts[k].size for k in ("kernel", "initrd", "rootfs")}
    print("  sizes: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
          + f", total {sum(sizes.values()) / 2**20:.1f} MiB")
    cpio = subprocess.run(["zstd", "-d", "-c", str(initrd)], capture_output=True).stdout
    xz = lzma.compress(cpio, preset=9 | lzma.PRESET_EXTREME)
    print(f"  initrd compression: none {len(cpio) / 2**20:.2f} MiB, gzip-9 {len(gzip.compress(cpio, 9)) / 2**20:.2f}, "
          f"zstd-19 {initrd.stat().st_size / 2**20:.2f}, xz-9e {len(xz) / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
