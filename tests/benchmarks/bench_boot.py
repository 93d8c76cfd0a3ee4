"""Boot, stop and reset timings, memory and image sizes, each beside the floor measured in the
same run (this machine is noisy). Prints a table; not a test.

With --baseline (the default) each round also boots a stock Debian 13 VM the way Lima boots a
distro VM (tests/distrovm.py, built once and cached), interleaved with Pinnace's own start in
alternating order, and reports Pinnace's start -> ready, idle guest memory and QEMU RSS as ratios
to it (medians of the rounds).

    .venv/bin/python tests/benchmarks/bench_boot.py [--rounds 3] [--settle 30] [--no-baseline] [--archive F]
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QEMU = Path("/usr/bin/qemu-system-x86_64")
sys.path.insert(0, str(ROOT))

from hypervisor.spec import ACCEL_OPTION, PROBE_MARKER, probe_argv  # noqa: E402
from tests import distrovm  # noqa: E402
from vmimage import locations, manifest  # noqa: E402
from vmimage.build import BUDGET_TOTAL  # noqa: E402


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


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def tb_size_mib(accel: str) -> int:
    """TCG's translation-buffer size Pinnace passes (hypervisor/spec.py); 0 when not TCG."""
    found = re.search(r"tb-size=(\d+)", ACCEL_OPTION.get(accel, ""))
    return int(found.group(1)) if found else 0


def pinnace_idle(env: dict[str, str]) -> tuple[float, float, float]:
    """(guest MemTotal - MemAvailable, QEMU VmRSS, resident TCG code buffer) of the running instance, MiB."""
    status = json.loads(pinnace(env, "status", "--json")[1].stdout)
    rss, code = distrovm.qemu_memory(status["qemu_pid"])
    meminfo = pinnace(env, "ssh", "--", "cat /proc/meminfo")[1].stdout
    return distrovm.used_mib(distrovm.parse_meminfo(meminfo)), rss, code


def distro_round(vm: distrovm.DistroVM, settle: float, cpus: int, memory_mib: int, accel: str,
                 tb_mib: int) -> tuple[float, float, float, float, str]:
    """(boot -> `docker version` s, guest used, QEMU RSS, resident code buffer, engine version);
    a boot whose kernel panicked is tried once more."""
    try:
        run = distrovm.boot(vm, cpus=cpus, memory_mib=memory_mib, accel=accel, tb_size_mib=tb_mib)
    except distrovm.GuestPanicked as e:
        print(f"  the Debian VM's kernel panicked; booting it again ({str(e).splitlines()[-1]})", file=sys.stderr)
        run = distrovm.boot(vm, cpus=cpus, memory_mib=memory_mib, accel=accel, tb_size_mib=tb_mib)
    try:
        time.sleep(settle)
        used = run.guest_memory_mib()
        rss, code = run.qemu_memory()
        return run.ready_seconds, used, rss, code, run.engine_version
    finally:
        run.stop()


def print_baseline(rounds: int, settle: float, tb_mib: int, cpus: int, memory_mib: int, vm: distrovm.DistroVM,
                   engine: str, pin: dict[str, list[float]], deb: dict[str, list[float]]) -> None:
    med = statistics.median
    pkgs = vm.info.get("packages", {})
    print(f"\nSame-run baseline — stock Debian 13 VM: systemd {pkgs.get('systemd', '?')}, docker.io "
          f"{pkgs.get('docker.io', '?')} (engine {engine}), OpenSSH {pkgs.get('openssh-server', '?')}, kernel "
          f"{vm.info.get('kernel', '?')};")
    print(f"  booted Lima-style (q35, virtio disk/net, user networking, direct kernel+initrd, -snapshot); both VMs "
          f"{cpus} vCPUs, {memory_mib} MiB, -accel tcg,tb-size={tb_mib}")
    print(f"  {rounds} rounds, Pinnace and Debian interleaved (order alternating); median (min-max); "
          f"memory read {settle:.0f} s after ready")
    print(f"  {'':44} {'Pinnace':>20} {'Debian 13 VM':>20} {'Pinnace/Debian':>15}")

    def row(label: str, key: str, unit: str, digits: int, minus: float = 0.0) -> None:
        p = [v - minus for v in pin[key]]
        d = [v - minus for v in deb[key]]
        cell = [f"{med(x):.{digits}f} ({min(x):.{digits}f}-{max(x):.{digits}f})" for x in (p, d)]
        print(f"  {label + ' (' + unit + ')':44} {cell[0]:>20} {cell[1]:>20} {med(p) / med(d):>15.2f}")

    row("start -> engine ready", "ready", "s", 1)
    row("idle guest memory, MemTotal-MemAvailable", "used", "MiB", 0)
    row("QEMU RSS", "rss", "MiB", 0)
    row(f"QEMU RSS minus TCG buffer ({tb_mib} MiB) *", "rss", "MiB", 0, minus=tb_mib)
    row("  TCG code buffer resident (smaps)", "code", "MiB", 0)
    print(f"  * approximation: VmRSS minus the {tb_mib} MiB translation-block buffer both VMs are given; the smaps "
          "row shows how much of that buffer was actually resident")
    print("  start -> ready: Pinnace's is `pinnace start` returning (CLI, agent, QEMU, guest, engine); the Debian VM's"
          " is QEMU start -> `docker version` answering over SSH (polled every 0.5 s on one multiplexed connection,"
          " `systemctl is-active docker` first)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--archive", type=Path, help="the image packed (`pinnace image pack`): print its size")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds idle before reading memory")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="interleave a stock Debian 13 VM (tests/distrovm.py; built once, cached) as a baseline")
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
    cpus, memory_mib = status.get("cpus") or 2, status.get("memory_mib") or 2048
    tb_mib = tb_size_mib(accel)
    vm = distrovm.ensure() if args.baseline else None
    pin: dict[str, list[float]] = {"ready": [], "used": [], "rss": [], "code": []}
    deb: dict[str, list[float]] = {"ready": [], "used": [], "rss": [], "code": []}
    engine = ""
    for i in range(args.rounds):
        t0 = time.monotonic()
        # The floor: QEMU start -> kernel -> trivial init -> power off (whole process lifetime).
        probe = subprocess.run(probe_argv(QEMU, "x86_64", accel, kernel, initrd, "linux"),
                               capture_output=True, text=True, timeout=60)
        floor.append(time.monotonic() - t0)
        assert PROBE_MARKER in probe.stdout, probe.stderr
        order = ("pinnace", "debian") if i % 2 == 0 else ("debian", "pinnace")
        for who in order if vm else ("pinnace",):
            if who == "debian":
                ready, used, rss, code, engine = distro_round(vm, args.settle, cpus, memory_mib, accel, tb_mib)
                for key, value in zip(("ready", "used", "rss", "code"), (ready, used, rss, code), strict=True):
                    deb[key].append(value)
                print(f"  round {i + 1}: Debian 13 VM ready {ready:.1f} s, guest {used:.0f} MiB, QEMU RSS {rss:.0f} MiB"
                      f" (code buffer {code:.0f})", file=sys.stderr)
                continue
            seconds, _ = pinnace(env, "start")
            start.append(seconds)
            stages.append(stage_times(Path(home) / "logs" / "default" / "serial.log"))
            if vm:
                time.sleep(args.settle)
                used, rss, code = pinnace_idle(env)
                for key, value in zip(("ready", "used", "rss", "code"), (seconds, used, rss, code), strict=True):
                    pin[key].append(value)
                print(f"  round {i + 1}: Pinnace ready {seconds:.1f} s, guest {used:.0f} MiB, QEMU RSS {rss:.0f} MiB"
                      f" (code buffer {code:.0f})", file=sys.stderr)
            seconds, _ = pinnace(env, "stop")
            stop.append(seconds)

    resets = []
    pinnace(env, "start")
    for _ in range(args.rounds):
        seconds, _ = pinnace(env, "reset", "--yes")
        resets.append(seconds)
    time.sleep(args.settle)
    status = json.loads(pinnace(env, "status", "--json")[1].stdout)
    qemu_rss, _ = distrovm.qemu_memory(status["qemu_pid"])
    meminfo = pinnace(env, "ssh", "--", "cat", "/proc/meminfo")[1].stdout
    mem = {name: kib // 1024 for name, kib in distrovm.parse_meminfo(meminfo).items()}
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
    cpio = initrd.read_bytes()
    if not cpio.startswith(b"070701"):
        cpio = subprocess.run(["zstd", "-d", "-c", str(initrd)], capture_output=True).stdout
    zstd = subprocess.run(["zstd", "-19", "-c"], input=cpio, capture_output=True).stdout
    xz = lzma.compress(cpio, preset=9 | lzma.PRESET_EXTREME)
    print(f"  initrd compression: none {len(cpio) / 2**20:.2f} MiB, gzip-9 {len(gzip.compress(cpio, 9)) / 2**20:.2f}, "
          f"zstd-19 {len(zstd) / 2**20:.2f}, xz-9e {len(xz) / 2**20:.2f} MiB")
    if args.archive:
        print(f"  shipped archive {args.archive.name}: {args.archive.stat().st_size / 2**20:.1f} MiB "
              f"({args.archive.stat().st_size / 1e6:.1f} MB; budget {BUDGET_TOTAL / 2**20:.0f} MiB), "
              f"installed from it {sum(sizes.values()) / 2**20:.1f} MiB")
    if vm:
        print_baseline(args.rounds, args.settle, tb_mib, cpus, memory_mib, vm, engine, pin, deb)
        if vm.build_seconds is not None:
            print(f"  (the Debian VM was built in this run: {vm.build_seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
