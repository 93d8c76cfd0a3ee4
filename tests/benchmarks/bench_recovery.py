"""How fast Pinnace recovers from the faults of a working day (issues #13 and #14), on a throwaway
instance; each figure beside its baseline from the same run (this machine is noisy). Not a test.

    .venv/bin/python tests/benchmarks/bench_recovery.py [--pause 60] [--rounds 3] [--no-disk-full]

- QEMU killed (-9) -> `error` published; -> the engine answering again after the automatic
  restart; baseline: a plain `pinnace start` -> engine ready of the same instance.
- a VM paused for --pause s (`pinnace pause`) -> `pinnace start`: the guest clock's offset just
  before the agent sets it and after; time to the first successful docker call; baseline: a docker
  call on the running VM.
- the host disk full (a tmpfs, root only) -> `paused`; space freed -> `running`, and -> the engine
  answering; baseline: the same docker call on the running VM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hypervisor import launcher  # noqa: E402
from hypervisor.paths import Paths  # noqa: E402
from vmimage import locations  # noqa: E402


class Instance:
    def __init__(self, home: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PINNACE_", "DOCKER_"))}
        self.env.update(PINNACE_HOME=str(home), PINNACE_IMAGE_DIR=str(locations.default_image_dir("x86_64")))
        self.paths = Paths.for_instance("default", self.env)

    def pinnace(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=self.env, text=True,
                              capture_output=True, timeout=900)
        if check and proc.returncode != 0:
            raise SystemExit(f"pinnace {' '.join(args)} failed: {proc.stdout} {proc.stderr}".strip())
        return proc

    def status(self) -> dict:
        return json.loads(self.pinnace("status", "--json", check=False).stdout)

    def ping(self) -> bool:
        """One engine request through the forwarded socket (what any docker command does first)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.paths.docker_socket))
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False


class Recorder:
    """The agent's status stream, each change with its arrival time."""

    def __init__(self, vm: Instance) -> None:
        self.seen: list[tuple[float, str, dict]] = []
        self.client = launcher.client(vm.paths, timeout=900)
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        try:
            for status in self.client.watch(timeout=900):
                self.seen.append((time.monotonic(), status.state, status.to_dict()))
        except Exception:  # noqa: BLE001 - the agent went away: the stream ends
            pass

    def first(self, state: str, after: float, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, s, _ in list(self.seen):
                if s == state and t >= after:
                    return t
            time.sleep(0.01)
        raise SystemExit(f"no {state} within {timeout:.0f} s")


def until(check, timeout: float = 60.0, every: float = 0.02) -> float:  # noqa: ANN001
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic()
        time.sleep(every)
    raise SystemExit("timed out")


def median(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} s (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def crash_rounds(vm: Instance, rounds: int) -> None:
    to_error, to_ready, boots = [], [], []
    for _ in range(rounds):
        recorder = Recorder(vm)
        time.sleep(0.5)
        pid = vm.status()["qemu_pid"]
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        to_error.append(recorder.first("error", killed) - killed)
        recorder.first("running", killed)
        to_ready.append(until(vm.ping, 300) - killed)
        time.sleep(1)
        vm.pinnace("stop")
        began = time.monotonic()
        vm.pinnace("start")
        boots.append(time.monotonic() - began)
    print(f"QEMU kill -9 -> error published        {median(to_error)}")
    print(f"QEMU kill -9 -> engine answering again {median(to_ready)}  (includes the 2 s restart delay)")
    print(f"  baseline: pinnace start -> ready     {median(boots)}")


def pause_rounds(vm: Instance, rounds: int, pause_s: float) -> None:
    offsets_before, offsets_after, first_call, baseline = [], [], [], []
    for _ in range(rounds):
        t = time.monotonic()
        vm.ping()
        baseline.append(time.monotonic() - t)
        vm.pinnace("pause")
        time.sleep(pause_s)
        log_mark = vm.paths.agent_log.stat().st_size
        resumed = time.monotonic()
        vm.pinnace("start")
        first_call.append(until(vm.ping, 60) - resumed)
        until(lambda mark=log_mark: "guest clock set" in vm.paths.agent_log.read_text(errors="replace")[mark:],
              30, 0.1)
        tail = vm.paths.agent_log.read_text(errors="replace")[log_mark:]
        line = next(ln for ln in tail.splitlines() if "guest clock set" in ln)
        was = float(line.split("it was ")[1].split(" s")[0])
        now = float(line.split("now ")[1].split(" s")[0])
        offsets_before.append(abs(was))
        offsets_after.append(abs(now))
    print(f"paused {pause_s:.0f} s: guest clock behind on resume   {median(offsets_before)}")
    print(f"  after the agent set it (|offset|)         {statistics.median(offsets_after) * 1000:.0f} ms "
          f"(max {max(offsets_after) * 1000:.0f} ms)")
    print(f"  resume -> first engine call answered       {median(first_call)}  (includes the CLI's start)")
    print(f"  baseline: one engine call on a running VM  {median(baseline)}")


def disk_full_round(vm_home: Path) -> None:
    if os.geteuid() != 0:
        print("disk full: skipped (mounting a tmpfs needs root)")
        return
    fs = Path(tempfile.mkdtemp(prefix="pinnace-bench-fs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200m,mode=0700", "tmpfs", str(fs)], check=True)
    vm = Instance(fs / "home")
    try:
        vm.pinnace("start")
        import docker  # noqa: PLC0415

        from tests.imagekit import busybox_image  # noqa: PLC0415 - docker SDK: test dependency

        image = busybox_image(docker.DockerClient(base_url=f"unix://{vm.paths.docker_socket}", timeout=300))
        t = time.monotonic()
        vm.ping()
        baseline = time.monotonic() - t
        recorder = Recorder(vm)
        ballast = fs / "ballast"
        free = shutil.disk_usage(fs).free
        subprocess.run(["fallocate", "-l", str(free - 150 * 2**20), str(ballast)], check=True)
        env = {**vm.env, "DOCKER_HOST": f"unix://{vm.paths.docker_socket}"}
        subprocess.Popen(["docker", "run", "-d", "-v", "big:/v", image, "sh", "-c",
                          "dd if=/dev/urandom of=/v/big bs=1M count=400"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        began = time.monotonic()
        paused = recorder.first("paused", began)
        t = time.monotonic()
        refused = not vm.ping()
        refusal = time.monotonic() - t
        ballast.unlink()
        freed = time.monotonic()
        running = recorder.first("running", freed)
        answering = until(vm.ping, 60)
        print(f"disk full: write began -> paused published   {paused - began:7.2f} s")
        print(f"  a docker call while paused refused in      {refusal:7.3f} s ({'refused' if refused else 'ANSWERED'})")
        print(f"  space freed -> running                     {running - freed:7.2f} s")
        print(f"  space freed -> engine answering            {answering - freed:7.2f} s")
        print(f"  baseline: one engine call on a running VM  {baseline:7.3f} s")
    finally:
        vm.pinnace("stop", check=False)
        subprocess.run(["umount", "-l", str(fs)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=float, default=60.0, help="seconds the VM stays paused")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-disk-full", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pinnace-bench-recovery-"))
    vm = Instance(home)
    try:
        vm.pinnace("start")
        crash_rounds(vm, args.rounds)
        pause_rounds(vm, args.rounds, args.pause)
    finally:
        vm.pinnace("stop", check=False)
        shutil.rmtree(home, ignore_errors=True)
    if not args.no_disk_full:
        disk_full_round(home)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
