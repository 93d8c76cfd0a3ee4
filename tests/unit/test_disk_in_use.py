"""A reset never deletes a data disk a QEMU still holds, whatever the pid files say: the check is
the image lock QEMU itself takes (a real, paused QEMU here; no guest boots)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hypervisor import disk
from hypervisor.errors import MachineError

pytestmark = pytest.mark.timeout(60)
QEMU_IMG = Path(shutil.which("qemu-img") or "qemu-img")


@pytest.fixture
def data_disk(tmp_path: Path) -> Path:
    if shutil.which("qemu-img") is None or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is needed (scripts/install.sh installs it)")
    path = tmp_path / "data.qcow2"
    subprocess.run(disk.create_argv(QEMU_IMG, path, 1), check=True)
    return path


def test_a_disk_held_by_a_running_qemu_is_not_deleted(data_disk: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    qemu = subprocess.Popen(["qemu-system-x86_64", "-S", "-display", "none", "-nodefaults",
                             "-drive", f"file={data_disk},if=virtio,format=qcow2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while disk.in_use(QEMU_IMG, data_disk) is None:
            assert time.monotonic() < deadline, "QEMU never took the image lock"
            time.sleep(0.1)
        with pytest.raises(MachineError, match="in use by a running VM"):
            disk.delete_instance_data(data_disk, keys, QEMU_IMG)
        assert data_disk.exists() and keys.exists()
    finally:
        qemu.kill()
        qemu.wait()
    assert disk.in_use(QEMU_IMG, data_disk) is None
    disk.delete_instance_data(data_disk, keys, QEMU_IMG)
    assert not data_disk.exists() and not keys.exists()


def test_no_disk_is_not_in_use(tmp_path: Path) -> None:
    assert disk.in_use(QEMU_IMG, tmp_path / "none.qcow2") is None


def test_only_a_disk_the_guest_never_wrote_counts_as_blank(data_disk: Path) -> None:
    """What lets the guest format it: a first boot that died before mkfs leaves a blank disk."""
    assert disk.is_blank(QEMU_IMG, data_disk)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x53 4096 4096", str(data_disk)], check=True,
                   capture_output=True)
    assert not disk.is_blank(QEMU_IMG, data_disk)
