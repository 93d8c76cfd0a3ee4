"""The Debian 13 baseline VM's pure builders: QEMU and SSH argv, guest configuration, build key,
and the parsers of /proc files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor.spec import ACCEL_OPTION
from tests import distrovm

pytestmark = pytest.mark.timeout(30)


def make_vm(disk: str = "/c/disk.qcow2") -> distrovm.DistroVM:
    return distrovm.DistroVM(directory=Path("/c"), disk=Path(disk), kernel=Path("/c/vmlinuz"),
                             initrd=Path("/c/initrd.img"), ssh_key=Path("/c/id_ed25519"))


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_qemu_argv_boots_lima_style():
    argv = distrovm.qemu_argv(make_vm(), 40022, Path("/run/serial.log"), cpus=2, memory_mib=2048)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert option(argv, "-machine") == ["q35"]
    assert option(argv, "-accel") == ["tcg,tb-size=256"]
    assert option(argv, "-cpu") == ["max"]
    assert option(argv, "-smp") == ["2"] and option(argv, "-m") == ["2048"]
    assert option(argv, "-kernel") == ["/c/vmlinuz"] and option(argv, "-initrd") == ["/c/initrd.img"]
    assert option(argv, "-append") == ["root=/dev/vda rw console=ttyS0 quiet"]
    assert option(argv, "-drive") == ["file=/c/disk.qcow2,if=virtio,format=qcow2"]
    assert option(argv, "-netdev") == ["user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22"]
    assert "virtio-net-pci,netdev=n0" in option(argv, "-device")
    assert option(argv, "-serial") == ["file:/run/serial.log"]
    assert "-snapshot" in argv and "-nographic" in argv
    assert option(argv, "-monitor") == ["none"]


def test_qemu_argv_tb_size_matches_pinnace_and_is_adjustable():
    # Pinnace's own TCG option (hypervisor/spec.py) gives the same translation buffer.
    assert distrovm.accel_option("tcg") == ACCEL_OPTION["tcg"]
    argv = distrovm.qemu_argv(make_vm(), 1, Path("/s"), cpus=1, memory_mib=512, tb_size_mib=64)
    assert option(argv, "-accel") == ["tcg,tb-size=64"]
    assert option(argv, "-smp") == ["1"] and option(argv, "-m") == ["512"]
    kvm = distrovm.qemu_argv(make_vm(), 1, Path("/s"), accel="kvm")
    assert option(kvm, "-accel") == ["kvm"] and option(kvm, "-cpu") == ["host"]


def test_qemu_argv_without_snapshot_only_for_the_first_boot():
    argv = distrovm.qemu_argv(make_vm(), 1, Path("/s"), snapshot=False)
    assert "-snapshot" not in argv
    assert "-snapshot" in distrovm.qemu_argv(make_vm(), 1, Path("/s"))


def test_qemu_argv_escapes_commas_in_the_disk_path():
    argv = distrovm.qemu_argv(make_vm("/a,b/disk.qcow2"), 1, Path("/s"))
    assert option(argv, "-drive") == ["file=/a,,b/disk.qcow2,if=virtio,format=qcow2"]


def test_ssh_argv_uses_the_key_on_loopback_without_prompts():
    argv = distrovm.ssh_argv(Path("/c/id_ed25519"), 40022, "docker version")
    assert argv[0] == "ssh" and argv[-2:] == ["root@127.0.0.1", "docker version"]
    assert option(argv, "-i") == ["/c/id_ed25519"] and option(argv, "-p") == ["40022"]
    opts = option(argv, "-o")
    for expected in ("BatchMode=yes", "IdentitiesOnly=yes", "StrictHostKeyChecking=no",
                     "UserKnownHostsFile=/dev/null"):
        assert expected in opts
    assert any(o.startswith("ConnectTimeout=") for o in opts)
    assert not any(o.startswith("Control") for o in opts)


def test_ssh_argv_multiplexes_over_a_control_socket():
    opts = option(distrovm.ssh_argv(Path("/k"), 1, "true", control=Path("/run/x/ssh.ctl")), "-o")
    assert "ControlMaster=auto" in opts and "ControlPath=/run/x/ssh.ctl" in opts
    assert any(o.startswith("ControlPersist=") for o in opts)


def test_ready_command_runs_docker_version_once_the_unit_is_up():
    assert distrovm.READY_COMMAND.startswith("systemctl is-active --quiet docker.service && docker version")


def test_config_files_network_for_user_networking():
    files = distrovm.config_files()
    network = files["etc/systemd/network/20-wired.network"]
    assert "[Match]" in network and "en*" in network and "DHCP=ipv4" in network
    assert files["etc/resolv.conf"] == "nameserver 10.0.2.3\n"
    assert files["etc/fstab"].split()[:3] == ["/dev/vda", "/", "ext4"]
    sources = files["etc/apt/sources.list.d/debian.sources"]
    assert "Suites: trixie trixie-updates" in sources and "Suites: trixie-security" in sources
    assert sources.count(f"Signed-By: {distrovm.KEYRING}") == 2


def test_build_key_names_suite_and_version_and_follows_changes(monkeypatch):
    key = distrovm.build_key()
    assert key.startswith(f"trixie-v{distrovm.VERSION}-")
    assert distrovm.build_key() == key
    monkeypatch.setattr(distrovm, "PACKAGES", (*distrovm.PACKAGES, "htop"))
    assert distrovm.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(distrovm, "VERSION", distrovm.VERSION + "x")
    assert distrovm.build_key() != key


def test_debootstrap_mkfs_and_apt_argv():
    argv = distrovm.debootstrap_argv(Path("/w/root"))
    assert argv[0] == "debootstrap" and argv[-3:] == ["trixie", "/w/root", "http://deb.debian.org/debian"]
    assert f"--keyring={distrovm.KEYRING}" in argv and "--variant=minbase" not in argv
    mkfs = distrovm.mkfs_argv(Path("/w/root"), Path("/w/disk.raw"), 4096)
    assert mkfs[0] == "mkfs.ext4" and mkfs[-2:] == ["/w/disk.raw", "4096M"]
    assert option(mkfs, "-d") == ["/w/root"]
    assert "lazy_itable_init=0" in option(mkfs, "-E")[0]
    install = distrovm.apt_install_argv()
    for pkg in ("systemd", "systemd-sysv", "docker.io", "openssh-server", "linux-image-amd64"):
        assert pkg in install
    chroot = distrovm.chroot_argv(Path("/w/root"), "apt-get", "update")
    assert chroot[:4] == ["chroot", "/w/root", "env", "-i"] and chroot[-2:] == ["apt-get", "update"]
    assert "DEBIAN_FRONTEND=noninteractive" in chroot


MEMINFO = """MemTotal:        2014864 kB
MemFree:         1650000 kB
MemAvailable:    1763984 kB
Buffers:           12000 kB
HugePages_Total:       0
"""


def test_meminfo_used_is_total_minus_available():
    info = distrovm.parse_meminfo(MEMINFO)
    assert info["MemTotal"] == 2014864 and info["HugePages_Total"] == 0
    assert distrovm.used_mib(info) == pytest.approx((2014864 - 1763984) / 1024)


def test_vmrss():
    assert distrovm.vmrss_mib("Name:\tqemu\nVmPeak:\t 9 kB\nVmRSS:\t  1048576 kB\n") == 1024
    with pytest.raises(ValueError):
        distrovm.vmrss_mib("Name:\tqemu\n")


SMAPS = """55d0c0000000-55d0c0100000 r-xp 00000000 fe:01 123   /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 800 kB
7f0000000000-7f0008000000 rwxp 00000000 00:00 0
Size:             131072 kB
Rss:              100000 kB
7f0008000000-7f0008001000 ---p 00000000 00:00 0
Size:                  4 kB
Rss:                   0 kB
7f0008001000-7f0010000000 rwxp 00000000 00:00 0
Size:             131068 kB
Rss:               50000 kB
7f0010000000-7f0090000000 rw-p 00000000 00:00 0
Size:            2097152 kB
Rss:              400000 kB
7f0090000000-7f0090001000 rwxp 00000000 00:05 77  /memfd:jit (deleted)
Size:                  4 kB
Rss:                   4 kB
"""


def test_code_buffer_sums_anonymous_rwx_mappings_only():
    assert distrovm.code_buffer_rss_mib(SMAPS) == pytest.approx(150000 / 1024)
    assert distrovm.code_buffer_rss_mib("") == 0
