"""The QEMU argv table: machine, accelerator, CPU model and console per host OS / arch / accel."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor.errors import AcceleratorError
from hypervisor.mounts import GuestShare
from hypervisor.spec import FIRMWARE, MachineSpec, build_argv, probe_argv

QEMU = Path("/usr/bin/qemu-system-x")


def make_spec(arch: str = "x86_64", **kw) -> MachineSpec:
    values = dict(
        name="default",
        arch=arch,
        cpus=2,
        memory_mib=2048,
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd"),
        rootfs=Path("/img/root.img"),
        cmdline="rootwait ro",
        data_disk=Path("/data/data.qcow2"),
        ssh_host_port=42022,
        fw_cfg=(("opt/pinnace/ssh_host_key", Path("/keys/host_ed25519")),),
        serial_log=Path("/logs/serial.log"),
        qmp_socket=Path("/run/qmp.sock"),
        pidfile=Path("/run/qemu.pid"),
    )
    values.update(kw)
    return MachineSpec(**values)


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def one(argv: list[str], flag: str) -> str:
    found = values(argv, flag)
    assert len(found) == 1, (flag, found)
    return found[0]


TABLE = [
    # host_os, arch, accel, machine, accel option, cpu
    ("linux", "x86_64", "kvm", "q35", "kvm", "host"),
    ("linux", "x86_64", "tcg", "q35", "tcg,tb-size=256", "max"),
    ("linux", "aarch64", "kvm", "virt,gic-version=max", "kvm", "host"),
    ("linux", "aarch64", "tcg", "virt,gic-version=max", "tcg,tb-size=256", "max"),
    ("darwin", "aarch64", "hvf", "virt,gic-version=max", "hvf", "host"),
    ("darwin", "aarch64", "tcg", "virt,gic-version=max", "tcg,tb-size=256", "max"),
    ("darwin", "x86_64", "hvf", "q35", "hvf", "host"),
    ("darwin", "x86_64", "tcg", "q35", "tcg,tb-size=256", "max"),
    ("windows", "x86_64", "whpx", "q35", "whpx,kernel-irqchip=off", "max"),
    ("windows", "x86_64", "tcg", "q35", "tcg,tb-size=256", "max"),
    ("windows", "aarch64", "tcg", "virt,gic-version=max", "tcg,tb-size=256", "max"),
]


@pytest.mark.parametrize(("host_os", "arch", "accel", "machine", "accel_opt", "cpu"), TABLE)
def test_argv_table(host_os: str, arch: str, accel: str, machine: str, accel_opt: str, cpu: str) -> None:
    argv = build_argv(QEMU, make_spec(arch), accel, host_os)
    assert argv[0] == str(QEMU)
    assert one(argv, "-machine") == machine
    assert one(argv, "-accel") == accel_opt
    assert one(argv, "-cpu") == cpu
    console = "console=ttyS0" if arch == "x86_64" else "console=ttyAMA0"
    assert one(argv, "-append") == f"rootwait ro {console}"
    # no graphics, no default devices, no reboot loops
    assert one(argv, "-display") == "none"
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert "-vga" not in argv and "-nographic" not in argv
    # SSH forward only on loopback
    netdev = one(argv, "-netdev")
    assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:42022-:22"
    assert "0.0.0.0" not in " ".join(argv)
    # read-only raw root, writable qcow2 data disk
    drives = values(argv, "-drive")
    assert drives[0] == "if=none,id=root,file=/img/root.img,format=raw,readonly=on"
    assert drives[1] == (
        "if=none,id=data,file=/data/data.qcow2,format=qcow2,discard=unmap,detect-zeroes=unmap,cache=writeback,"
        "werror=enospc,rerror=report"
    )


def test_full_argv_devices_and_plumbing() -> None:
    argv = build_argv(QEMU, make_spec(), "kvm", "linux")
    assert one(argv, "-name") == "pinnace-default,process=pinnace-default"
    assert one(argv, "-smp") == "2" and one(argv, "-m") == "2048"
    assert one(argv, "-kernel") == "/img/vmlinuz" and one(argv, "-initrd") == "/img/initrd"
    assert values(argv, "-device") == [
        "virtio-blk-pci,drive=root,serial=pinnace-root",
        "virtio-blk-pci,drive=data,serial=pinnace-data",
        "virtio-net-pci,netdev=net0",
        "virtio-rng-pci",
        "virtio-balloon-pci,free-page-reporting=on",
    ]
    assert one(argv, "-rtc") == "base=utc,clock=host"  # the guest's clock service follows it
    assert one(argv, "-fw_cfg") == "name=opt/pinnace/ssh_host_key,file=/keys/host_ed25519"
    assert one(argv, "-chardev") == "file,id=serial0,path=/logs/serial.log"
    assert one(argv, "-serial") == "chardev:serial0"
    assert one(argv, "-qmp") == "unix:/run/qmp.sock,server=on,wait=off"
    assert one(argv, "-pidfile") == "/run/qemu.pid"


def test_firmware_only_when_given() -> None:
    assert "-bios" not in build_argv(QEMU, make_spec(), "tcg", "linux")
    argv = build_argv(QEMU, make_spec(firmware=Path("/usr/share/qemu/qboot.rom")), "tcg", "linux")
    assert one(argv, "-bios") == "/usr/share/qemu/qboot.rom"
    assert FIRMWARE == {("x86_64", "tcg"): "qboot.rom"}  # measured there only; KVM/HVF/WHPX keep QEMU's


@pytest.mark.parametrize(("arch", "accel", "machine"), [
    ("x86_64", "kvm", "q35,memory-backend=mem"),
    ("x86_64", "tcg", "q35,memory-backend=mem"),
    ("aarch64", "kvm", "virt,gic-version=max,memory-backend=mem"),
    ("aarch64", "tcg", "virt,gic-version=max,memory-backend=mem"),
])
def test_virtiofs_puts_guest_memory_in_a_shared_memfd(arch: str, accel: str, machine: str) -> None:
    spec = make_spec(arch, shares=(GuestShare("pinnace0", "/home/a", False, "virtiofs"),),
                     share_socket_dir=Path("/run/p"))
    argv = build_argv(QEMU, spec, accel, "linux")
    assert one(argv, "-machine") == machine
    assert one(argv, "-m") == "2048"
    assert one(argv, "-object") == "memory-backend-memfd,id=mem,size=2048M,share=on"
    assert values(argv, "-chardev")[0] == "socket,id=vfs0,path=/run/p/vfs0.sock"
    assert "vhost-user-fs-pci,chardev=vfs0,tag=pinnace0" in values(argv, "-device")
    # the memory object is defined before anything refers to it
    assert argv.index("-object") < argv.index("-device")


def test_shared_memory_is_linux_only() -> None:
    spec = make_spec(shares=(GuestShare("pinnace0", "/Users/a", False, "virtiofs"),), share_socket_dir=Path("/r"))
    with pytest.raises(AcceleratorError, match="needs a Linux host, not darwin"):
        build_argv(QEMU, spec, "hvf", "darwin")


def test_9p_shares_need_no_shared_memory() -> None:
    argv = build_argv(QEMU, make_spec(shares=(GuestShare("pinnace0", "/home/a"),)), "kvm", "linux")
    assert one(argv, "-machine") == "q35" and "-object" not in argv
    assert values(argv, "-fsdev") == ["local,id=fs0,path=/home/a,security_model=none"]


def test_extra_host_forwards_are_appended() -> None:
    spec = make_spec(host_forwards=("tcp:127.0.0.1:8080-:80", "udp:127.0.0.1:5353-:53"))
    netdev = one(build_argv(QEMU, spec, "tcg", "linux"), "-netdev")
    assert netdev == (
        "user,id=net0,hostfwd=tcp:127.0.0.1:42022-:22,"
        "hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53"
    )


def test_commas_in_paths_are_escaped() -> None:
    spec = make_spec(
        data_disk=Path("/home/a,b/data.qcow2"),
        serial_log=Path("/l,x/serial.log"),
        qmp_socket=Path("/r,1/qmp.sock"),
        fw_cfg=(("opt/x", Path("/k,1/key")),),
    )
    argv = build_argv(QEMU, spec, "tcg", "linux")
    assert "file=/home/a,,b/data.qcow2," in values(argv, "-drive")[1]
    assert one(argv, "-chardev") == "file,id=serial0,path=/l,,x/serial.log"
    assert one(argv, "-qmp").startswith("unix:/r,,1/qmp.sock,")
    assert one(argv, "-fw_cfg") == "name=opt/x,file=/k,,1/key"


def test_multiple_fw_cfg_entries_keep_order() -> None:
    spec = make_spec(fw_cfg=(("opt/a", Path("/a")), ("opt/b", Path("/b"))))
    assert values(build_argv(QEMU, spec, "tcg", "linux"), "-fw_cfg") == [
        "name=opt/a,file=/a",
        "name=opt/b,file=/b",
    ]


@pytest.mark.parametrize(
    ("host_os", "arch", "accel", "message"),
    [
        ("darwin", "x86_64", "kvm", "accel kvm: not available on darwin"),
        ("linux", "x86_64", "hvf", "accel hvf: not available on linux"),
        ("linux", "x86_64", "whpx", "accel whpx: not available on linux"),
        ("windows", "aarch64", "whpx", "accel whpx: QEMU supports it only for x86_64"),
        ("linux", "x86_64", "auto", "accel auto: unknown accelerator"),
    ],
)
def test_meaningless_combinations_raise(host_os: str, arch: str, accel: str, message: str) -> None:
    with pytest.raises(AcceleratorError, match=message):
        build_argv(QEMU, make_spec(arch), accel, host_os)


@pytest.mark.parametrize(("host_os", "arch", "accel", "machine", "accel_opt", "cpu"), TABLE)
def test_probe_argv_is_minimal(
    host_os: str, arch: str, accel: str, machine: str, accel_opt: str, cpu: str
) -> None:
    argv = probe_argv(QEMU, arch, accel, Path("/img/vmlinuz"), Path("/img/initrd"), host_os)
    assert (one(argv, "-machine"), one(argv, "-accel"), one(argv, "-cpu")) == (machine, accel_opt, cpu)
    assert one(argv, "-smp") == "1" and one(argv, "-m") == "256"
    tty = "ttyS0" if arch == "x86_64" else "ttyAMA0"
    assert one(argv, "-append") == f"console={tty} pinnace.probe=1 panic=-1"  # not quiet: see SILENT_HANG_S
    assert one(argv, "-serial") == "stdio"
    assert one(argv, "-display") == "none" and "-no-reboot" in argv and "-nodefaults" in argv
    for absent in ("-drive", "-netdev", "-device", "-qmp", "-fw_cfg", "-pidfile"):
        assert absent not in argv
