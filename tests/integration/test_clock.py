"""Sleep and wake (issue #14) on the shared instance: the guest clock follows the host's after a
pause, after being set wrong with no wake event at all, and the engine link survives QEMU being
stopped (SIGSTOP, as a sleeping host stops it) without anyone restarting anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Instance
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]

PAUSE_S = 60.0


class ContainerClock:
    """Reads a container's clock through one long-lived `docker exec -i` (a new exec per reading
    would add its own second of setup between the host's reading and the guest's)."""

    def __init__(self, vm: Instance, container: str) -> None:
        self.env = {**vm.env, "DOCKER_HOST": vm.docker_host}
        self.container = container
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(["docker", "exec", "-i", self.container, "sh", "-c",
                                 'while read -r _; do echo "$EPOCHREALTIME"; done'],
                                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def offset(self) -> float | None:
        """The container's clock minus the host's (at the midpoint of the round trip, NTP-style),
        or None when the round trip was too slow (over 1 s: a loaded guest) to tell."""
        if self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        sent = time.time()
        self.proc.stdin.write("\n")
        line = self.proc.stdout.readline()
        received = time.time()
        if received - sent > 1.0:
            return None
        return float(line) - (sent + received) / 2

    def within(self, tolerance: float) -> float | bool:
        """The offset's size when it is certainly known and within `tolerance`; False otherwise."""
        offset = self.offset()
        return offset is not None and abs(offset) <= tolerance and max(abs(offset), 1e-6)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def container_clock(vm_instance: Instance, busybox: str) -> Iterator[ContainerClock]:
    name = f"clock-{os.getpid()}"
    vm_instance.docker("run", "-d", "--name", name, busybox, "sleep", "3600")
    clock = ContainerClock(vm_instance, name)
    yield clock
    clock.close()
    vm_instance.docker("rm", "-f", name, check=False)


def status(vm: Instance) -> dict:
    return json.loads(vm.pinnace("status", "--json").stdout)


@pytest.mark.timeout(300)
def test_the_clock_is_right_within_5_s_of_resuming_a_paused_vm(vm_instance: Instance,
                                                              container_clock: ContainerClock) -> None:
    vm = vm_instance
    paused = vm.pinnace("pause")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert status(vm)["state"] == "paused"
    time.sleep(PAUSE_S)
    resumed = vm.pinnace("start")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    began = time.monotonic()
    within = wait_for("the container's clock within 1 s of the host's",
                      lambda: container_clock.within(1.0), 5.0, 0.1)
    print(f"after a {PAUSE_S:.0f} s pause: container clock {within:.3f} s off, "
          f"{time.monotonic() - began:.1f} s after the resume")
    assert abs(status(vm)["clock_offset_s"]) < 1.0


@pytest.mark.timeout(300)
def test_a_guest_clock_an_hour_behind_is_corrected_within_30_s(vm_instance: Instance,
                                                               container_clock: ContainerClock) -> None:
    """No pause, no wake: nothing tells the agent; the guest's RTC check (or the agent's periodic
    one) must find it."""
    vm = vm_instance
    set_back = vm.pinnace("ssh", "--", 'date -u -s @$(( $(date +%s) - 3600 )) >/dev/null; echo "$EPOCHREALTIME"')
    assert time.time() - float(set_back.stdout) > 3000, set_back.stdout + set_back.stderr
    began = time.monotonic()
    wait_for("the clock corrected", lambda: container_clock.within(1.0), 30.0, 0.5)
    print(f"an hour behind: corrected within {time.monotonic() - began:.1f} s")


@pytest.mark.timeout(300)
def test_the_engine_answers_at_once_after_qemu_was_stopped_for_a_minute(vm_instance: Instance) -> None:
    vm = vm_instance
    qemu = status(vm)["qemu_pid"]
    os.kill(qemu, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)
    finally:
        os.kill(qemu, signal.SIGCONT)
    began = time.monotonic()
    answer = vm.docker("version", "--format", "{{.Server.Version}}", timeout=30)
    took = time.monotonic() - began
    print(f"docker version {took:.2f} s after SIGCONT")
    assert answer.stdout.strip() and took < 5.0
    assert status(vm)["qemu_pid"] == qemu  # nothing was restarted
