"""Foreign-architecture containers on the shared x86_64 guest: an arm64 image runs under the
static qemu-aarch64 the image registers with binfmt_misc (F flag, so it works in containers)."""

from __future__ import annotations

import platform

import pytest

from tests.imagekit import rootfs_tar

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]
TAG = "pinnace-test/busybox-arm64:latest"


@pytest.fixture(scope="module")
def arm64_busybox(vm_instance) -> str:  # noqa: ANN001 - conftest.Instance
    vm_instance.docker("import", "--platform", "linux/arm64", "-c", 'CMD ["sh"]', "-c", "ENV PATH=/bin", "-", TAG,
                       input=rootfs_tar(arch="arm64"))
    return TAG


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the shared guest is not x86_64")
def test_arm64_container_runs_on_the_x86_64_guest(vm_instance, arm64_busybox: str) -> None:  # noqa: ANN001
    arch = vm_instance.docker("image", "inspect", "-f", "{{.Architecture}}", arm64_busybox).stdout.strip()
    assert arch == "arm64"
    result = vm_instance.docker("run", "--rm", "--platform", "linux/arm64", arm64_busybox, "uname", "-m", check=False)
    assert result.returncode == 0, (
        f"arm64 container failed ({result.returncode}): {result.stderr.strip()} — is qemu-aarch64 registered "
        "in the guest's binfmt_misc? (an image built before issue 7 lacks it: pinnace image build)")
    assert result.stdout.strip() == "aarch64"
    native = vm_instance.docker("run", "--rm", "pinnace-test/busybox:latest", "uname", "-m", check=False)
    if native.returncode == 0:  # the shared busybox image exists once another test imported it
        assert native.stdout.strip() == "x86_64"
