"""Faults that must never cost data, on a throwaway instance: SIGTERM to the agent (a logout) powers
the guest off cleanly; a damaged data disk is repaired from its backup superblock or refused with
one line naming it, never formatted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Instance, make_instance
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]

PRIMARY_SUPERBLOCK = 1024
BACKUP_BLOCKS_4K = (32768, 98304, 163840, 229376, 294912)  # what the guest tries, 4 KiB blocks


@pytest.fixture(scope="module")
def faults_vm(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Iterator[Instance]:
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io (qemu-utils) is needed to damage the disk")
    vm = make_instance(tmp_path_factory.mktemp("faults"), image_dir, name="faults")
    try:
        yield vm
    finally:
        vm.pinnace("stop", timeout=120)


def zero(disk: Path, offset: int, length: int) -> None:
    """Zeros where the guest sees them (through the qcow2 layer), as a damaged sector would read."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -z {offset} {length}", str(disk)], check=True,
                   capture_output=True)


def disk_in_use(disk: Path) -> str | None:
    from hypervisor.disk import in_use

    return in_use(Path(shutil.which("qemu-img") or "qemu-img"), disk)


def started(vm: Instance) -> None:
    done = vm.pinnace("start")
    assert done.returncode == 0, done.stdout + done.stderr


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


@pytest.mark.timeout(600)
def test_sigterm_to_the_agent_powers_the_guest_off_cleanly(faults_vm: Instance) -> None:
    vm = faults_vm
    started(vm)
    status = json.loads(vm.pinnace("status", "--json").stdout)
    os.kill(status["agent_pid"], signal.SIGTERM)
    wait_for("the agent and QEMU to exit", lambda: gone(status["agent_pid"]) and gone(status["qemu_pid"]), 60, 0.2)
    last = json.loads(vm.paths.state_file.read_text())
    assert last["state"] == "stopped", last
    assert "PINNACE-STAGE halted" in vm.paths.serial_log.read_text(errors="replace")  # a clean power-off
    # the next boot finds a clean filesystem (e2fsck -p had nothing to fix)
    started(vm)
    fsck = [ln for ln in vm.paths.serial_log.read_text(errors="replace").splitlines() if "pinnace: fsck" in ln]
    assert fsck and " rc=0 " in fsck[-1], fsck
    assert vm.pinnace("stop").returncode == 0


@pytest.mark.timeout(900)
def test_damaged_superblock_is_repaired_or_refused_never_formatted(faults_vm: Instance, tmp_path: Path) -> None:
    from tests.imagekit import busybox_image

    vm = faults_vm
    started(vm)
    image = busybox_image(vm.client())
    vm.docker("run", "--rm", "-v", "precious:/v", image, "sh", "-c", "echo keep > /v/f && sync")
    assert vm.pinnace("stop").returncode == 0

    # 1 KiB zeroed over the primary superblock: repaired from a backup, the volume intact
    zero(vm.paths.data_disk, PRIMARY_SUPERBLOCK, 1024)
    started(vm)
    assert vm.docker("run", "--rm", "-v", "precious:/v", image, "cat", "/v/f").stdout == "keep\n"
    assert "repaired from its backup superblock" in vm.paths.serial_log.read_text(errors="replace")
    assert vm.pinnace("stop").returncode == 0

    # the primary and every backup the guest tries: a clear refusal, and the disk untouched
    disk = vm.paths.data_disk
    zero(disk, PRIMARY_SUPERBLOCK, 1024)
    for block in BACKUP_BLOCKS_4K:
        zero(disk, block * 4096, 4096)
    before = tmp_path / "before.qcow2"
    shutil.copyfile(disk, before)
    failed = vm.pinnace("start")
    assert failed.returncode == 1
    assert "it was not formatted" in failed.stderr and str(disk) in failed.stderr, failed.stderr
    assert "pinnace reset" in failed.stderr
    # the failure is reported first; the failed boot's QEMU is ended right after
    wait_for("QEMU to let go of the disk", lambda: disk_in_use(disk) is None, 30)
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(before), str(disk)],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    status = vm.pinnace("status")
    assert "error" in status.stdout and "not formatted" in status.stdout, status.stdout


@pytest.mark.timeout(300)
def test_no_container_reaches_the_guest_sshd(vm_instance: Instance, busybox: str) -> None:
    """Any image could otherwise attack sshd before authentication, or hold its slots so the agent
    cannot reconnect: on every guest address, not even the banner answers."""
    vm = vm_instance
    gateway = json.loads(vm.docker("network", "inspect", "bridge").stdout)[0]["IPAM"]["Config"][0]["Gateway"]
    for address in (gateway, "10.0.2.15", "10.0.2.16"):
        probe = vm.docker("run", "--rm", busybox, "sh", "-c", f"echo | nc -w 3 {address} 22; true", timeout=120)
        assert "SSH-" not in probe.stdout, (address, probe.stdout)
    # the host's own way in still works
    assert vm.pinnace("ssh", "--", "echo reachable").stdout.strip() == "reachable"
    # and the probe itself works: the same nc reaches a server in another container
    server = vm.docker("run", "-d", busybox, "sh", "-c", "mkdir -p /www && echo hi > /www/index.html && "
                       "exec httpd -f -p 8080 -h /www").stdout.strip()
    try:
        ip = json.loads(vm.docker("inspect", server).stdout)[0]["NetworkSettings"]["IPAddress"]
        answer = vm.docker("run", "--rm", busybox, "sh", "-c",
                           f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080; true", timeout=120)
        assert "HTTP/" in answer.stdout, answer.stdout
    finally:
        vm.docker("rm", "-f", server, check=False)
