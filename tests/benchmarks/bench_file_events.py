"""Host file changes -> inotify in a container, measured.

    python tests/benchmarks/bench_file_events.py [--rounds 20] [--files 100000]

Boots a throwaway instance (PINNACE_HOME in a temp dir, the built image), runs an inotify watcher
(a static C program) in a container on a bind of a folder under $HOME, and times each event from
the moment of the change to its line arriving through `docker logs -f` on the host:

- host: the host appends to a file (the relay's path: host inotify -> agent -> SSH -> guest kernel)
- in-container baseline: a shell in a second container on the same bind, already running and fed
  on stdin, appends to the file (the guest's own VFS raises the event; the same log path),
  measured in the same run, round by round

Then the agent-side cost of following a tree of --files files (set-up time, RSS, idle CPU) with a
stand-in guest, as tests/unit/test_file_events.py checks it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import Instance  # noqa: E402
from tests.integration.test_ports_mounts import WATCH_C, ContainerShell  # noqa: E402

PINNACE = [sys.executable, "-m", "app.cli"]


class LogFollower:
    """`docker logs -f`: every line with the monotonic time it arrived."""

    def __init__(self, env: dict[str, str], container: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(["docker", "logs", "-f", container], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, text: str, after: float, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if at >= after and line == text:
                    return at - after
            time.sleep(0.005)
        raise TimeoutError(text)

    def close(self) -> None:
        self.proc.kill()


def latencies(env: dict[str, str], share: Path, rounds: int) -> tuple[list[float], list[float]]:
    tree = share / "src"
    tree.mkdir()
    subprocess.run(["gcc", "-static", "-Os", "-o", str(share / "watch"), "-x", "c", "-"], input=WATCH_C,
                   text=True, check=True)
    name, writer = f"bench-watch-{uuid.uuid4().hex[:6]}", f"bench-writer-{uuid.uuid4().hex[:6]}"
    image = busybox(env)
    run = lambda *a: subprocess.run(["docker", *a], env=env, check=True, capture_output=True, text=True)  # noqa: E731
    run("run", "-d", "--name", name, "-v", f"{share}:/w", image, "/w/watch", "/w/src")
    run("run", "-d", "--name", writer, "-v", f"{share}:/w", image, "sleep", "3600")
    follower = LogFollower(env, name)
    shell = ContainerShell(Instance("default", share, env), writer)
    try:
        follower.wait("watching /w/src", 0, 60)
        time.sleep(3)  # the agent follows the new bind on its next port sync
        host, inside = [], []
        for i in range(rounds):
            target = tree / f"f{i}.txt"
            target.write_text("0")
            time.sleep(0.3)
            started = time.monotonic()
            with target.open("a") as f:
                f.write("1")
            host.append(follower.wait(f"modify f{i}.txt", started))
            time.sleep(0.3)
            started = time.monotonic()
            shell.run(f"echo 2 >> /w/src/f{i}.txt")
            inside.append(follower.wait(f"modify f{i}.txt", started))
        return host, inside
    finally:
        shell.close()
        follower.close()
        subprocess.run(["docker", "rm", "-f", name, writer], env=env, capture_output=True)


def busybox(env: dict[str, str]) -> str:
    import docker

    from tests.imagekit import busybox_image

    return busybox_image(docker.DockerClient(base_url=env["DOCKER_HOST"]))


def tree_cost(files: int) -> str:
    code = ("import tests.unit.test_file_events as t, pathlib, tempfile, pytest;"
            f"t.TREE_FILES={files};"
            "mp=pytest.MonkeyPatch();"
            "t.test_a_tree_of_100k_files_costs_little(pathlib.Path(tempfile.mkdtemp()), mp)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[-1] if (out.stdout + out.stderr).strip() else "?"


def fmt(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"median {statistics.median(ms):6.0f} ms   p90 {ms[int(len(ms) * 0.9) - 1]:6.0f} ms   max {ms[-1]:6.0f} ms"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--files", type=int, default=100_000)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pinnace-evbench-"))
    share = Path.home() / f"pinnace-evbench-{uuid.uuid4().hex[:6]}"
    share.mkdir()
    env = {**os.environ, "PINNACE_HOME": str(home), "DOCKER_CONFIG": str(home / "docker")}
    env.setdefault("PINNACE_IMAGE_DIR", str(Path.home() / ".local/share/pinnace/images/x86_64"))
    try:
        started = subprocess.run([*PINNACE, "start"], env=env, cwd=ROOT, capture_output=True, text=True)
        if started.returncode != 0:
            print(started.stdout + started.stderr)
            return 1
        env["DOCKER_HOST"] = f"unix://{home}/run/default/docker.sock"
        host, inside = latencies(env, share, args.rounds)
        print(f"event latency over {args.rounds} rounds (change -> line via docker logs -f on the host)")
        print(f"  host edit, replayed         {fmt(host)}")
        print(f"  edit inside a container     {fmt(inside)}   (baseline: the guest's own inotify)")
        print(f"agent cost of a {args.files:,}-file tree: {tree_cost(args.files)}")
    finally:
        subprocess.run([*PINNACE, "stop"], env=env, cwd=ROOT, capture_output=True)
        shutil.rmtree(share, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
