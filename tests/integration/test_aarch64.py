"""The aarch64 guest: its kernel config, then a boot under TCG (any host: PINNACE_ARCH=aarch64 makes
the agent emulate it) to engine-ready, an arm64 container, and a clean stop through gpio-keys.

Skipped when the aarch64 image is not built (`pinnace image build --arch aarch64`)."""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import make_instance
from tests.imagekit import rootfs_tar
from vmimage import locations, manifest
from vmimage.kernel import parse_config

pytestmark = [pytest.mark.aarch64]
TAG = "pinnace-test/busybox-arm64:latest"
NEEDS = """SERIAL_AMBA_PL011_CONSOLE PCI_HOST_GENERIC VIRTIO_PCI VIRTIO_BLK VIRTIO_NET FW_CFG_SYSFS RTC_DRV_PL031
GPIO_PL061 KEYBOARD_GPIO INPUT_EVDEV BINFMT_MISC SQUASHFS_ZSTD OVERLAY_FS BRIDGE VETH NF_TABLES NFT_COMPAT CGROUPS
MEMCG USER_NS SECCOMP_FILTER 9P_FS""".split()


@pytest.fixture(scope="module")
def aarch64_image() -> Path:
    directory = locations.image_root() / "aarch64"
    try:
        m = manifest.load(directory)
    except manifest.ManifestError:
        pytest.skip(f"the aarch64 image is not built ({directory}): run `pinnace image build --arch aarch64` "
                    "(needs gcc-aarch64-linux-gnu)")
    assert m.arch == "aarch64"
    return directory


def test_aarch64_kernel_config(aarch64_image: Path) -> None:
    config = parse_config((aarch64_image / "kernel.config").read_text())
    missing = [opt for opt in NEEDS if config.get(f"CONFIG_{opt}") != "y"]
    assert not missing, missing
    assert config.get("CONFIG_ARM64") == "y" and config.get("CONFIG_MODULES", "n") == "n"


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_aarch64_guest_boots_runs_a_container_and_stops(tmp_path_factory: pytest.TempPathFactory,
                                                        aarch64_image: Path) -> None:
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed (apt-get install qemu-system-arm)")
    instance = make_instance(tmp_path_factory.mktemp("arm"), aarch64_image, name="arm")
    instance.env["PINNACE_ARCH"] = "aarch64"
    try:
        started = time.monotonic()
        result = instance.pinnace("start", timeout=600)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        status = json.loads(instance.pinnace("status", "--json").stdout)
        print(f"aarch64 guest ready in {time.monotonic() - started:.1f} s "
              f"(agent: {status['ready_at'] - status['started_at']:.1f} s, accel {status['accel']})")
        if platform.machine().lower() in ("x86_64", "amd64"):  # a foreign guest: emulated, never probed
            assert status["accel"] == "tcg" and "aarch64 guest" in status["accel_reason"], status
        instance.docker("import", "--platform", "linux/arm64", "-c", 'CMD ["sh"]', "-c", "ENV PATH=/bin", "-", TAG,
                        input=rootfs_tar(arch="arm64"))
        assert instance.docker("run", "--rm", TAG, "uname", "-m").stdout.strip() == "aarch64"
    finally:
        stop = instance.pinnace("stop", timeout=180)
    assert stop.returncode == 0, stop.stderr
    serial = instance.paths.serial_log.read_text(errors="replace")
    assert "power button pressed" in serial, "QMP system_powerdown did not reach the guest's gpio-keys"
    assert "PINNACE-STAGE halted" in serial
