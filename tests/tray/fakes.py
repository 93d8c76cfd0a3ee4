"""Fake control clients: only for view logic and responsiveness tests (VM flows use a real agent)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor.control import Status
from hypervisor.errors import ControlError


class SlowClient:
    """Answers like an agent, but every lifecycle call takes `delay` seconds."""

    def __init__(self, status: Status, delay: float = 2.0) -> None:
        self._status, self.delay = status, delay
        self.calls: list[tuple[str, float | None, str]] = []
        self.lock = threading.Lock()

    def status(self) -> Status:
        return self._status

    def is_alive(self) -> bool:
        return True

    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]:
        with self.lock:
            self.calls.append((op, timeout, threading.current_thread().name))
        time.sleep(self.delay)
        if op == "stop":
            self._status = Status(self._status.instance, state="stopped")
        return {}

    def watch(self, timeout: float | None = None) -> Iterator[Status]:
        yield self._status


class DeadClient:
    """No agent: every call fails the way ControlClient does."""

    def status(self) -> Status:
        raise ControlError("the agent is not running (no answer on /nowhere)")

    def is_alive(self) -> bool:
        return False

    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]:
        raise ControlError("the agent is not running (no answer on /nowhere)")

    def watch(self, timeout: float | None = None) -> Iterator[Status]:
        raise ControlError("the agent is not running (no answer on /nowhere)")


@dataclass(frozen=True)
class FakeCheck:
    """Shaped like hypervisor.diagnose.CheckResult (the tray only reads these fields)."""

    key: str
    title: str
    outcome: str
    detail: str = ""
    hint: str = ""


# A realistic run: mostly passing, the guest clock drifting, the docker context pointing elsewhere.
SAMPLE_CHECKS = (
    FakeCheck("host.accel", "Hardware acceleration", "pass", "KVM: /dev/kvm is readable and writable"),
    FakeCheck("host.disk", "Free disk space", "pass", "182.4 GiB free on /home"),
    FakeCheck("image", "VM image", "pass", "pinnace-guest 0.9.2, checksum verified"),
    FakeCheck("agent", "Host agent", "pass", "running (pid 41233), the control socket answers"),
    FakeCheck("vm", "VM", "pass", "Running · KVM · 2 CPUs, 4 GiB, up 3 h 12 min"),
    FakeCheck("ssh", "Guest SSH", "pass", "answers on 127.0.0.1:52214 in 38 ms"),
    FakeCheck("clock", "Guest clock", "warn", "guest is 2.4 s ahead of the host",
              "Corrected at the next resume; `pinnace restart` sets it now."),
    FakeCheck("engine.socket", "Docker socket", "pass", "/run/user/1000/pinnace/default/docker.sock answers"),
    FakeCheck("engine.version", "Docker engine", "pass", "Docker 26.1.3 (API 1.45)"),
    FakeCheck("docker.context", "docker context", "fail",
              "context \"pinnace\" points at unix:///home/u/.old-pinnace/docker.sock",
              "Run `docker context rm pinnace`; Pinnace recreates it at the next start."),
    FakeCheck("mounts", "Shared folders", "pass", "2 shares mounted: /home/u, /tmp/pinnace"),
    FakeCheck("ports", "Published ports", "skip", "no container publishes a port"),
    FakeCheck("logs", "Agent log", "pass", "no errors in the last 500 lines"),
)


class FakeDiagnose:
    """run_checks / write_bundle with hypervisor.diagnose's signatures, called on the pool. With
    `hold`, both wait for `release()` (to see the window while they run)."""

    def __init__(self, results: tuple[FakeCheck, ...] = SAMPLE_CHECKS, hold: bool = False,
                 bundle_error: Exception | None = None) -> None:
        self.results, self.bundle_error = results, bundle_error
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.runs = 0
        self.bundles: list[Path | None] = []
        self.threads: list[str] = []

    def release(self) -> None:
        self.gate.set()

    def run_checks(self, paths: object, on_result: Callable[[FakeCheck], None] | None = None) -> list[FakeCheck]:
        self.runs += 1
        self.threads.append(threading.current_thread().name)
        for r in self.results:
            if on_result is not None:
                on_result(r)
        self.gate.wait(10)
        return list(self.results)

    def write_bundle(self, paths: object, dest: Path | None = None,
                     on_progress: Callable[[str], None] | None = None) -> Path:
        self.threads.append(threading.current_thread().name)
        self.bundles.append(dest)
        if on_progress is not None:
            on_progress("collecting the agent log")
        self.gate.wait(10)
        if self.bundle_error is not None:
            raise self.bundle_error
        if dest is None:
            return Path("pinnace-diagnose-default-20250101T000000Z.tar.gz")
        dest.write_bytes(b"bundle")
        return dest
