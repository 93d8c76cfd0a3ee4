"""The built guest image: kernel config, contents, manifest, size, reproducibility, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmimage import manifest
from vmimage.build import BUDGET_KERNEL, BUDGET_TOTAL
from vmimage.kernel import parse_config
from vmimage.recipe import DEFAULT_RECIPE

ROOT = Path(__file__).resolve().parents[2]

# moby contrib/check-config.sh "Generally Necessary" (kernel >= 4.8), plus what the guest needs.
MOBY_NECESSARY = """NAMESPACES NET_NS PID_NS IPC_NS UTS_NS CGROUPS CGROUP_CPUACCT CGROUP_DEVICE CGROUP_FREEZER
CGROUP_SCHED CPUSETS MEMCG KEYS VETH BRIDGE BRIDGE_NETFILTER IP_NF_FILTER IP_NF_MANGLE IP_NF_TARGET_MASQUERADE
IP6_NF_FILTER IP6_NF_MANGLE IP6_NF_TARGET_MASQUERADE NETFILTER_XT_MATCH_ADDRTYPE NETFILTER_XT_MATCH_CONNTRACK
NETFILTER_XT_MATCH_IPVS NETFILTER_XT_MARK IP_NF_RAW IP_NF_NAT NF_NAT IP6_NF_RAW IP6_NF_NAT POSIX_MQUEUE""".split()
GUEST_NEEDS = """USER_NS SECCOMP SECCOMP_FILTER CGROUP_PIDS BLK_CGROUP MEMCG CPUSETS CGROUP_BPF OVERLAY_FS NF_TABLES
NFT_COMPAT NFT_NAT NFT_MASQ VIRTIO_PCI VIRTIO_MMIO VIRTIO_BLK VIRTIO_NET VIRTIO_CONSOLE HW_RANDOM_VIRTIO
VIRTIO_BALLOON PAGE_REPORTING VIRTIO_VSOCKETS NET_9P_VIRTIO 9P_FS FUSE_FS VIRTIO_FS FW_CFG_SYSFS EXT4_FS SQUASHFS
SQUASHFS_ZSTD DEVTMPFS BLK_DEV_INITRD RD_ZSTD IKCONFIG_PROC ACPI_BUTTON INPUT_EVDEV SERIAL_8250_CONSOLE
BINFMT_MISC""".split()


@pytest.fixture(scope="module")
def built(image_dir: Path) -> manifest.Manifest:
    return manifest.load(image_dir)


def test_kernel_config_has_everything_docker_and_the_guest_need(image_dir: Path) -> None:
    config = parse_config((image_dir / "kernel.config").read_text())
    missing = [opt for opt in MOBY_NECESSARY + GUEST_NEEDS if config.get(f"CONFIG_{opt}") != "y"]
    assert not missing, f"kernel options not built in: {missing}"
    assert config.get("CONFIG_MODULES", "n") == "n", "everything must be built in"
    assert config.get("CONFIG_64BIT") == "y"


def test_manifest_matches_the_artefacts(image_dir: Path, built: manifest.Manifest) -> None:
    for kind in ("kernel", "initrd", "rootfs", "cmdline"):
        art = built.artifacts[kind]
        path = image_dir / art.file
        assert path.stat().st_size == art.size
        assert manifest.sha256_file(path) == art.sha256
    names = {p["name"]: p["version"] for p in built.packages}
    for needed in ("docker.io", "containerd", "runc", "tini", "iptables", "openssh-server", "busybox-static",
                   "e2fsprogs", "libc6", "linux-source-6.12"):
        assert names.get(needed), f"{needed} missing from the manifest"
    assert names["docker.io"].startswith("26.1")
    assert built.kernel_version.startswith("6.12")
    assert len(built.kernel_config_sha256) == 64


def test_root_image_holds_the_engine_and_nothing_extra(image_dir: Path, built: manifest.Manifest) -> None:
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", str(built.path_of(image_dir, "rootfs"))],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    files = {line.strip().lstrip("/") for line in listing}
    for needed in ("usr/sbin/dockerd", "usr/bin/containerd", "usr/sbin/runc", "usr/sbin/sshd",
                   "usr/lib/openssh/sshd-session", "usr/sbin/mke2fs", "usr/bin/busybox", "etc/inittab",
                   "etc/ssl/certs/ca-certificates.crt", "usr/lib/x86_64-linux-gnu/libc.so.6"):
        assert needed in files, needed
    unwanted = [f for f in files if f.startswith(("usr/share/man", "usr/share/doc", "usr/share/locale"))
                or f in ("usr/bin/docker", "usr/lib/systemd/systemd")]
    assert not unwanted, unwanted
    assert not any("ssh_host" in f for f in files), "no host key may be baked into the shared image"


def test_kernel_size_budget(built: manifest.Manifest) -> None:
    assert built.artifacts["kernel"].size <= BUDGET_KERNEL


def test_boot_size_regression_guard(built: manifest.Manifest) -> None:
    """Installed: 93.3 MiB (the lz4 root image, chosen for boot speed, and an uncompressed initrd);
    the 45 MiB budget applies to the download (the next tests). Catches growth of what users keep."""
    assert built.boot_size <= 95 * 2**20


@pytest.mark.timeout(900)
def test_shipped_archive_fits_the_budget_and_unpacks_to_the_same_image(
        image_archive: Path, built: manifest.Manifest, tmp_path: Path) -> None:
    assert image_archive.stat().st_size <= BUDGET_TOTAL, f"{image_archive.stat().st_size / 2**20:.1f} MiB"
    assert image_archive.name == f"pinnace-{built.version}-x86_64.tar.xz"
    out = tmp_path / "unpacked"
    result = subprocess.run([sys.executable, "-m", "vmimage", "unpack", str(image_archive), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    again = manifest.load(out)
    assert again.artifacts == built.artifacts  # byte for byte: every sha256 as built
    for art in again.artifacts.values():
        assert manifest.sha256_file(out / art.file) == art.sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(a.file for a in built.artifacts.values()), "kernel.config", "manifest.json"])


@pytest.mark.timeout(900)
def test_damaged_archive_is_one_line_and_leaves_the_image_dir_as_it_was(image_archive: Path, tmp_path: Path) -> None:
    damaged = tmp_path / image_archive.name
    with open(image_archive, "rb") as src, open(damaged, "wb") as dst:
        dst.write(src.read(image_archive.stat().st_size // 3))
    out = tmp_path / "image"
    out.mkdir()
    (out / "keep").write_text("the user's")
    result = subprocess.run([sys.executable, "-m", "vmimage", "unpack", str(damaged), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "damaged image archive" in errors[0] and "Traceback" not in result.stderr, errors
    assert sorted(p.name for p in out.iterdir()) == ["keep"]
    missing = subprocess.run([sys.executable, "-m", "vmimage", "unpack", str(tmp_path / "nope.tar.xz")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no such file" in missing.stderr


def copy_recipe(tmp_path: Path, text: str) -> Path:
    for sub in ("guest", "kernel"):
        shutil.copytree(DEFAULT_RECIPE.parent / sub, tmp_path / sub)
    recipe = tmp_path / "image.toml"
    recipe.write_text(text)
    return recipe


def build(tmp_path: Path, recipe: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PINNACE_IMAGE_DIR",)}
    return subprocess.run([sys.executable, "-m", "vmimage", "build", "--recipe", str(recipe), "--out",
                           str(tmp_path / "out")], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=timeout)


@pytest.mark.timeout(300)
def test_missing_package_is_a_one_line_error(tmp_path: Path, image_dir: Path) -> None:
    text = DEFAULT_RECIPE.read_text().replace('"netbase",', '"netbase", "no-such-pkg-pinnace",')
    recipe = copy_recipe(tmp_path, text)
    result = build(tmp_path, recipe)
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("pinnace: error")]
    assert len(errors) == 1 and "no-such-pkg-pinnace" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(300)
def test_unreachable_mirror_is_a_one_line_error(tmp_path: Path) -> None:
    recipe = copy_recipe(tmp_path, DEFAULT_RECIPE.read_text().replace(
        'mirror = "http://deb.debian.org/debian"', 'mirror = "http://127.0.0.1:9/debian"'))
    env_cache = tmp_path / "cache"
    env = {**os.environ, "PINNACE_CACHE_DIR": str(env_cache)}
    result = subprocess.run([sys.executable, "-m", "vmimage", "build", "--recipe", str(recipe), "--out",
                             str(tmp_path / "out")], cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert errors and "127.0.0.1:9" in errors[-1] and "Traceback" not in result.stderr, result.stderr


@pytest.mark.timeout(900)
def test_building_twice_gives_identical_artefacts(tmp_path: Path, image_dir: Path, built: manifest.Manifest) -> None:
    result = build(tmp_path, DEFAULT_RECIPE)
    assert result.returncode == 0, result.stderr
    again = manifest.load(tmp_path / "out")
    for kind in ("kernel", "initrd", "rootfs", "cmdline"):
        assert again.artifacts[kind].sha256 == built.artifacts[kind].sha256, kind
