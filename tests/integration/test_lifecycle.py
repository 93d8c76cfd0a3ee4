"""The machine's whole life through the real CLI, real QEMU and the real engine (issue: the machine).

start → status → stop (clean) → larger disk, start (filesystem grown, data kept, clean fsck) →
kill -9 agent (re-adopted) → kill -9 QEMU (error with reason, start works) → reset (data gone,
settings kept).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
from pathlib import Path

import pytest

from hypervisor.qemu_binary import find_firmware
from tests.imagekit import busybox_image
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]


def status_of(instance) -> dict:  # noqa: ANN001
    result = instance.pinnace("status", "--json", timeout=180)
    return json.loads(result.stdout)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def data_disk_kib(vm, image: str) -> int:  # noqa: ANN001
    """The size of the filesystem that holds the engine's volumes, as a container sees it."""
    out = vm.docker("run", "--rm", "-v", "keep:/keep", image, "stat", "-f", "-c", "%b %S", "/keep").stdout
    blocks, block_size = (int(n) for n in out.split())
    return blocks * block_size // 1024


def wait_gone(pid: int, timeout: float = 10) -> None:
    wait_for(f"pid {pid} to exit", lambda: gone(pid), timeout, 0.1)


@pytest.mark.timeout(1200)
def test_machine_lifecycle(fresh_instance) -> None:  # noqa: ANN001
    vm = fresh_instance
    assert vm.pinnace("config", "set", "cpus", "1").returncode == 0

    started = vm.pinnace("start")
    assert started.returncode == 0, started.stderr
    assert "engine socket:" in started.stdout
    st = status_of(vm)
    assert st["state"] == "running"
    assert st["accel"] in ("kvm", "hvf", "whpx", "tcg") and st["accel_reason"]
    if st["accel"] == "tcg" and os.path.exists("/dev/kvm"):
        assert "KVM" in st["accel_reason"], "the KVM probe's verdict must be named"
    assert st["cpus"] == 1
    # Under TCG on x86, qboot boots it where QEMU ships it (hypervisor/spec.py FIRMWARE); the clean
    # stop below proves the ACPI power button works with it.
    qboot = find_firmware(Path(shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"), "qboot.rom",
                          "linux")
    if st["accel"] == "tcg" and platform.machine() == "x86_64" and qboot is not None:
        assert f"-bios {qboot}" in vm.paths.agent_log.read_text(errors="replace")

    again = vm.pinnace("start")
    assert again.returncode == 0 and "already running" in again.stdout

    client = vm.client()
    image = busybox_image(client)
    client.volumes.create("keep")
    vm.docker("run", "--rm", "-v", "keep:/keep", image, "sh", "-c", "echo persisted > /keep/file")

    before_kib = data_disk_kib(vm, image)
    stopped = vm.pinnace("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert status_of(vm)["state"] == "stopped"
    serial = vm.paths.serial_log.read_text(errors="replace")
    assert "PINNACE-STAGE halted" in serial, "the guest must unmount the data disk before power-off"
    again = vm.pinnace("stop")
    assert again.returncode == 0 and "not running" in again.stdout

    # A larger disk while stopped: the next boot grows the filesystem online, the data kept.
    gib = int(vm.pinnace("config", "get", "disk_gib").stdout.strip()) + 1
    assert vm.pinnace("config", "set", "disk_gib", str(gib)).returncode == 0
    assert vm.pinnace("start").returncode == 0
    serial = vm.paths.serial_log.read_text(errors="replace")
    fsck = [line for line in serial.splitlines() if "fsck" in line]
    assert fsck and "clean" in fsck[-1] and "recover" not in serial.lower(), fsck
    out = vm.docker("run", "--rm", "-v", "keep:/keep", image, "cat", "/keep/file").stdout
    assert out.strip() == "persisted"
    grown_kib = data_disk_kib(vm, image)
    assert grown_kib - before_kib > 900 * 1024, f"the filesystem did not grow: {before_kib} -> {grown_kib} KiB"

    # The agent dies: QEMU keeps running and the next command re-adopts it.
    st = status_of(vm)
    qemu_pid = st["qemu_pid"]
    os.kill(st["agent_pid"], signal.SIGKILL)
    wait_gone(st["agent_pid"])
    st = status_of(vm)
    assert st["state"] == "running" and st["qemu_pid"] == qemu_pid
    assert vm.docker("version", "--format", "{{.Server.Version}}").stdout.strip()

    # QEMU dies: the status says so with the reason, and the VM is booted again by itself
    # (tests/integration/test_faults.py times both).
    os.kill(qemu_pid, signal.SIGKILL)
    wait_gone(qemu_pid)

    def restarted() -> dict | None:
        now = status_of(vm)
        return now if now["state"] == "running" and now["qemu_pid"] != qemu_pid else None

    wait_for("the automatic restart", restarted, 300, 0.5)
    assert "QEMU exited unexpectedly" in vm.paths.agent_log.read_text(errors="replace")
    assert vm.pinnace("start").returncode == 0

    # Reset: asks first (refused without a terminal), then deletes data, keeps settings.
    refused = vm.pinnace("reset")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "1 containers" in refused.stdout or "volumes" in refused.stdout
    reset = vm.pinnace("reset", "--yes", timeout=600)
    assert reset.returncode == 0, reset.stderr
    assert status_of(vm)["state"] == "running"
    assert vm.docker("volume", "ls", "-q").stdout.strip() == ""
    assert vm.pinnace("config", "get", "cpus").stdout.strip() == "1"


@pytest.mark.timeout(300)
def test_restart_keeps_engine_reachable(fresh_instance) -> None:  # noqa: ANN001
    vm = fresh_instance
    assert vm.pinnace("start").returncode == 0
    before = status_of(vm)
    result = vm.pinnace("restart", timeout=600)
    assert result.returncode == 0, result.stderr
    after = status_of(vm)
    assert after["state"] == "running" and after["qemu_pid"] != before["qemu_pid"]
    assert vm.docker("info", "--format", "{{.ServerVersion}}").stdout.strip()
