"""Resources the guest gives back to the host (issue #14): memory a container used and freed
leaves QEMU's resident set again (virtio-balloon free page reporting), and a file deleted from a
volume leaves the data disk's allocation again (ext4 online discard -> qcow2 discard=unmap).
Both on the shared instance, each test with its own container and volume. `pytest -s` prints
the figures."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Instance
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]

MIB = 1024 * 1024
FILL_MIB = 768  # what a container fills, if the guest has room for it
DISK_MIB = 256  # what a volume is given and loses


def status_json(vm: Instance) -> dict:
    shown = vm.pinnace("status", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def guest_meminfo_mib(vm: Instance) -> dict[str, int]:
    shown = vm.pinnace("ssh", "--", "cat /proc/meminfo", timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return {line.split(":")[0]: int(line.split()[1]) // 1024 for line in shown.stdout.splitlines() if ":" in line}


def guest_sync(vm: Instance) -> None:
    """The guest's own sync (busybox in the test image has no sync applet): commits the ext4
    journal, which is when online discard sends the freed ranges down."""
    done = vm.pinnace("ssh", "--", "sync", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def allocated_mib(path: Path) -> float:
    return os.stat(path).st_blocks * 512 / MIB


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.timeout(120)
def test_freed_memory_is_reported_in_small_runs(vm_instance: Instance) -> None:
    """The kernel reports free runs of 128 KiB (order 5), not only 2 MiB ones: after boot most
    free guest memory is fragmented below 2 MiB and would stay resident in QEMU (bench_boot.py)."""
    shown = vm_instance.pinnace("ssh", "--", "cat /sys/module/page_reporting/parameters/page_reporting_order")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert shown.stdout.strip() == "5"


@pytest.mark.timeout(600)
def test_memory_freed_in_the_guest_returns_to_the_host(vm_instance: Instance, busybox: str) -> None:
    vm = vm_instance
    status = status_json(vm)
    qemu = status["qemu_pid"]
    mem = guest_meminfo_mib(vm)
    # the fill must fit beside what the guest already uses (dockerd, containerd, page cache)
    fill = min(FILL_MIB, mem["MemAvailable"] - 256)
    assert fill >= 384, f"the guest has too little memory for the test: {mem} (memory_mib {status['memory_mib']})"
    needed_growth = fill * 500 / 768
    name = unique("memfill")
    print(f"\nguest memory_mib {status['memory_mib']}, MemTotal {mem['MemTotal']} MiB, "
          f"MemAvailable {mem['MemAvailable']} MiB; filling {fill} MiB of /dev/shm")
    try:
        before = rss_mib(qemu)
        vm.docker("run", "-d", "--name", name, f"--shm-size={fill + 128}m", busybox, "sh", "-c",
                  f"dd if=/dev/zero of=/dev/shm/fill bs=1M count={fill} 2>/dev/null && echo filled; exec sleep 3600")
        wait_for("the container to fill its memory",
                 lambda: "filled" in vm.docker("logs", name, check=False).stdout, 300, 1.0)
        # the pages were touched by the time dd returned; take the highest of a few readings
        readings = []
        for _ in range(3):
            time.sleep(1)
            readings.append(rss_mib(qemu))
        filled = max(readings)
        grew = filled - before
        print(f"QEMU RSS before {before:.0f} MiB, filled {filled:.0f} MiB (+{grew:.0f} MiB for {fill} MiB)")
        assert grew >= needed_growth, f"QEMU's RSS grew by {grew:.0f} MiB for {fill} MiB filled"

        removed = time.monotonic()
        vm.docker("rm", "-f", name)
        name = ""
        target = filled - grew / 2
        lowest = [filled]

        def returned() -> bool:
            lowest[0] = min(lowest[0], rss_mib(qemu))
            return lowest[0] <= target

        try:
            wait_for(f"QEMU's RSS to fall to {target:.0f} MiB", returned, 30, 0.5)
        finally:
            print(f"after removal: RSS {lowest[0]:.0f} MiB after {time.monotonic() - removed:.1f} s "
                  f"(gave back {filled - lowest[0]:.0f} MiB of {grew:.0f} MiB)")
    finally:
        if name:
            vm.docker("rm", "-f", name, check=False)


@pytest.mark.timeout(600)
def test_a_file_deleted_from_a_volume_shrinks_the_data_disk(vm_instance: Instance, busybox: str) -> None:
    vm = vm_instance
    disk = vm.paths.data_disk
    volume = unique("discard")
    try:
        guest_sync(vm)
        before = allocated_mib(disk)
        # urandom: zeros would be written as discards (detect-zeroes=unmap) and allocate nothing
        vm.docker("run", "--rm", "-v", f"{volume}:/v", busybox, "dd", "if=/dev/urandom", "of=/v/big", "bs=1M",
                  f"count={DISK_MIB}", "conv=fsync", timeout=600)
        guest_sync(vm)
        written = allocated_mib(disk)
        grew = written - before
        print(f"\ndata disk {disk.name}: allocated {before:.0f} MiB, after writing {DISK_MIB} MiB "
              f"{written:.0f} MiB (+{grew:.0f} MiB)")
        assert grew >= 200, f"the data disk's allocation grew by only {grew:.0f} MiB for {DISK_MIB} MiB written"

        deleted = time.monotonic()
        vm.docker("run", "--rm", "-v", f"{volume}:/v", busybox, "rm", "/v/big")
        guest_sync(vm)
        lowest = [written]

        def shrunk() -> bool:
            lowest[0] = min(lowest[0], allocated_mib(disk))
            return written - lowest[0] >= 200

        try:
            wait_for("the data disk's allocation to shrink by 200 MiB", shrunk, 30, 0.5)
        finally:
            print(f"after deleting: allocated {lowest[0]:.0f} MiB after {time.monotonic() - deleted:.1f} s "
                  f"(-{written - lowest[0]:.0f} MiB)")
    finally:
        vm.docker("volume", "rm", "-f", volume, check=False)
