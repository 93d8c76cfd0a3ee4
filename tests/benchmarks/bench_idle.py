"""Idle cost of a running instance (issue #14): CPU % of QEMU and of the agent over a window in
which nothing is asked of them, beside the whole host's CPU % over the same window (this machine
is noisy: other work shows there), and QEMU's context switches per second. Boots a throwaway
instance in a temporary PINNACE_HOME, waits for the engine and a settling time, samples, stops
it. Prints a table; not a test.

    .venv/bin/python tests/benchmarks/bench_idle.py [--seconds 60] [--settle 10] [--every 5]

The image is PINNACE_IMAGE_DIR from the environment, else the default image dir. CPU % is of
one core (100 % = one core busy the whole window); the host's is given both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vmimage import locations, manifest  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def pinnace(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"pinnace {' '.join(args)} failed: {proc.stdout.strip()} {proc.stderr.strip()}")
    return proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def ctxt_switches(pid: int) -> tuple[int, int]:
    """(voluntary, nonvoluntary) context switches of `pid`'s main thread plus its other threads."""
    voluntary = nonvoluntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # a thread that ended
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                nonvoluntary += int(line.split()[1])
    return voluntary, nonvoluntary


def main_thread_voluntary(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat; iowait counts as idle."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def children(pid: int, leave_out: set[int]) -> list[int]:
    """Direct and indirect children of `pid`, except `leave_out` (QEMU, measured on its own)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in leave_out:
                found.append(child)
                todo.append(child)
    return found


@dataclass
class Sample:
    at: float
    qemu: float
    agent: float
    others: float
    qemu_voluntary: int
    qemu_voluntary_all: int
    qemu_nonvoluntary_all: int
    host_busy: int
    host_total: int


def sample(qemu: int, agent: int, others: list[int]) -> Sample:
    other = 0.0
    for pid in others:
        try:
            other += cpu_seconds(pid)
        except OSError:
            pass
    voluntary_all, nonvoluntary_all = ctxt_switches(qemu)
    busy, total = host_cpu()
    return Sample(time.monotonic(), cpu_seconds(qemu), cpu_seconds(agent), other, main_thread_voluntary(qemu),
                  voluntary_all, nonvoluntary_all, busy, total)


def percent(seconds: float, wall: float) -> float:
    return 100.0 * seconds / wall if wall > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Idle CPU % of QEMU and of the agent of a freshly booted throwaway instance, beside the "
                    "host's total CPU % over the same window, and QEMU's context switches per second.")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the sampling window (default 60)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait after the engine is ready before sampling (default 10)")
    parser.add_argument("--every", type=float, default=5.0,
                        help="interval of the intermediate samples, for the spread (default 5)")
    parser.add_argument("--keep-home", action="store_true", help="leave the temporary PINNACE_HOME behind")
    args = parser.parse_args()

    image_dir = locations.default_image_dir("x86_64")  # PINNACE_IMAGE_DIR wins
    m = manifest.load(image_dir)
    home = Path(tempfile.mkdtemp(prefix="pinnace-bench-idle-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PINNACE_", "DOCKER_"))}
    env.update(PINNACE_HOME=str(home), PINNACE_IMAGE_DIR=str(image_dir))

    try:
        t0 = time.monotonic()
        pinnace(env, "start")  # returns once the engine answers
        boot = time.monotonic() - t0
        status = json.loads(pinnace(env, "status", "--json").stdout)
        qemu, agent = status["qemu_pid"], status["agent_pid"]
        time.sleep(args.settle)
        others = children(agent, {qemu})

        samples = [sample(qemu, agent, others)]
        end = samples[0].at + args.seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(args.every, left))
            samples.append(sample(qemu, agent, others))
        after = json.loads(pinnace(env, "status", "--json").stdout)
    finally:
        pinnace(env, "stop", timeout=300)
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)

    first, last = samples[0], samples[-1]
    wall = last.at - first.at
    host_share = (last.host_busy - first.host_busy) / max(1, last.host_total - first.host_total)
    steps = list(zip(samples, samples[1:], strict=False))

    def spread(field: str) -> str:
        values = [percent(getattr(b, field) - getattr(a, field), b.at - a.at) for a, b in steps]
        return f"(per {args.every:g} s: min {min(values):5.1f}, max {max(values):5.1f})" if values else ""

    host_steps = [100.0 * (b.host_busy - a.host_busy) / max(1, b.host_total - a.host_total) for a, b in steps]
    print(f"\nPinnace idle benchmark — accelerator {status.get('accel')}, {status.get('cpus')} vCPUs, "
          f"{status.get('memory_mib')} MiB, image {m.version}; host {CORES} cores")
    print(f"  pinnace start -> engine ready {boot:.1f} s; settled {args.settle:g} s; window {wall:.1f} s")
    for label, pid, field in (("QEMU ", qemu, "qemu"), ("agent", agent, "agent")):
        used = percent(getattr(last, field) - getattr(first, field), wall)
        print(f"  {label} (pid {pid})   CPU {used:6.2f} % of one core  {spread(field)}")
    if others:
        print(f"  agent's other children {others}: CPU {percent(last.others - first.others, wall):6.2f} % of one core")
    if host_steps:
        host_range = f"(per {args.every:g} s: min {min(host_steps):5.1f}, max {max(host_steps):5.1f} % of all)"
    else:
        host_range = ""
    print(f"  host total (baseline)  CPU {100 * host_share:6.2f} % of all {CORES} cores "
          f"= {100 * host_share * CORES:6.1f} % of one core  {host_range}")
    main_rate = (last.qemu_voluntary - first.qemu_voluntary) / wall
    all_voluntary = (last.qemu_voluntary_all - first.qemu_voluntary_all) / wall
    all_involuntary = (last.qemu_nonvoluntary_all - first.qemu_nonvoluntary_all) / wall
    print(f"  QEMU context switches: {main_rate:8.1f}/s voluntary (main thread, /proc/<pid>/status); "
          f"all threads {all_voluntary:.1f}/s voluntary + {all_involuntary:.1f}/s involuntary")
    if after.get("qemu_pid") != qemu or after.get("state") != "running":
        print(f"  warning: the instance changed during the window: {after.get('state')}, qemu {after.get('qemu_pid')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
