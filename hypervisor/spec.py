"""The QEMU command line for a Pinnace guest, built purely from a MachineSpec (nothing is run).

Every choice that differs per host OS / arch / accelerator lives in the small tables below, so
the test table can pin them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypervisor.errors import AcceleratorError
from hypervisor.mounts import MEMORY_BACKEND_ID, GuestShare, needs_shared_memory, share_argv
from hypervisor.platform.windows import NamedPipeAddress

PROBE_MARKER = "PINNACE-PROBE-OK"

# Which accelerators make sense where (the hardware ones need guest arch == host arch too,
# which the caller guarantees by choosing the binary for the host arch).
ACCEL_HOSTS: dict[str, tuple[str, ...]] = {
    "kvm": ("linux",),
    "hvf": ("darwin",),
    "whpx": ("windows",),
    "tcg": ("linux", "darwin", "windows"),
}

ACCEL_OPTION: dict[str, str] = {
    # TCG's translation buffer defaults to ~1 GiB of host RSS; 256 MiB is plenty for this guest.
    "tcg": "tcg,tb-size=256",
    "kvm": "kvm",
    "hvf": "hvf",
    # QEMU's docs for WHPX: the in-kernel irqchip is unreliable, let QEMU emulate the APIC.
    "whpx": "whpx,kernel-irqchip=off",
}

# kvm/hvf: pass the host CPU through. tcg: `max` enables every feature TCG emulates (on x86_64
# that includes AES-NI, so sshd can use AES-GCM cheaply). whpx: QEMU rejects `host` without
# KVM/HVF, and Hyper-V answers CPUID itself, so `max` is the widest model QEMU accepts there.
CPU_MODEL: dict[str, str] = {"kvm": "host", "hvf": "host", "tcg": "max", "whpx": "max"}

CONSOLE: dict[str, str] = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}

# Firmware other than QEMU's default, where it was measured (x86 under TCG): qboot, which QEMU
# ships beside SeaBIOS. It loads the kernel straight from fw_cfg with QEMU's ACPI tables, and runs
# no option ROMs, boot menu or disk probing: a trivial-init VM powers off 0.2 s sooner (1.40 ->
# 1.21 s, median of 6 alternating). Used only when the QEMU install has the file (find_firmware).
FIRMWARE: dict[tuple[str, str], str] = {("x86_64", "tcg"): "qboot.rom"}


@dataclass(frozen=True)
class MachineSpec:
    """Everything build_argv needs; paths are host paths, already resolved."""

    name: str
    arch: str
    cpus: int
    memory_mib: int
    kernel: Path
    initrd: Path
    rootfs: Path
    cmdline: str
    data_disk: Path
    ssh_host_port: int
    fw_cfg: tuple[tuple[str, Path], ...]
    serial_log: Path
    qmp_socket: Path | NamedPipeAddress  # a unix socket; a named pipe on Windows (see qmp_argv)
    pidfile: Path
    host_forwards: tuple[str, ...] = ()
    shares: tuple[GuestShare, ...] = ()  # host folders, virtio-9p or virtiofs (hypervisor/mounts.py)
    share_socket_dir: Path | None = None  # where the virtiofsd sockets of virtiofs shares are
    firmware: Path | None = None  # -bios (FIRMWARE); None: QEMU's default for the machine


def qemu_escape(value: str | Path) -> str:
    """QEMU option values use ',' as separator; a literal comma is written ',,'."""
    return str(value).replace(",", ",,")


def machine_option(arch: str, accel: str) -> str:
    """q35 on x86_64 (PCIe virtio, ACPI power button); virt on aarch64.

    gic-version=max picks the best GIC the accelerator offers; we also use it with KVM because
    the default GICv2 fails on GICv3-only hosts.
    """
    if arch == "x86_64":
        return "q35"
    if arch == "aarch64":
        return "virt,gic-version=max"
    raise AcceleratorError(f"arch {arch!r}: unsupported guest architecture")


def check_accel(arch: str, accel: str, host_os: str) -> None:
    if accel not in ACCEL_OPTION:
        raise AcceleratorError(f"accel {accel}: unknown accelerator (expected kvm, hvf, whpx or tcg)")
    if host_os not in ACCEL_HOSTS[accel]:
        raise AcceleratorError(f"accel {accel}: not available on {host_os}")
    if accel == "whpx" and arch != "x86_64":
        raise AcceleratorError(f"accel whpx: QEMU supports it only for x86_64 guests, not {arch}")


def console_arg(arch: str) -> str:
    return f"console={CONSOLE[arch]}"


def memory_argv(memory_mib: int) -> list[str]:
    """Guest RAM as a shared memfd, which vhost-user devices (virtiofs) need: virtiofsd maps the
    guest's memory to reach the request buffers. Linux hosts only (memfd)."""
    return ["-object", f"memory-backend-memfd,id={MEMORY_BACKEND_ID},size={memory_mib}M,share=on"]


def _base_argv(
    qemu: Path, name: str, arch: str, accel: str, host_os: str, cpus: int, memory_mib: int,
    shared_memory: bool = False, firmware: Path | None = None,
) -> list[str]:
    check_accel(arch, accel, host_os)
    machine = machine_option(arch, accel)
    if shared_memory:
        if host_os != "linux":
            raise AcceleratorError(f"shared guest memory (memfd, for virtiofs) needs a Linux host, not {host_os}")
        machine += f",memory-backend={MEMORY_BACKEND_ID}"
    return [
        str(qemu),
        "-name", f"pinnace-{name},process=pinnace-{name}",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        # A guest reboot or panic ends QEMU, so the agent notices instead of a silent reboot loop.
        "-no-reboot",
        "-machine", machine,
        "-accel", ACCEL_OPTION[accel],
        "-cpu", CPU_MODEL[accel],
        "-smp", str(cpus),
        "-m", str(memory_mib),
        *(["-bios", str(firmware)] if firmware is not None else []),
        *(memory_argv(memory_mib) if shared_memory else []),
    ]  # fmt: skip


def netdev_option(spec: MachineSpec) -> str:
    """User-mode networking; the SSH forward listens on loopback only."""
    rules = [f"tcp:127.0.0.1:{spec.ssh_host_port}-:22", *spec.host_forwards]
    return "user,id=net0," + ",".join(f"hostfwd={qemu_escape(rule)}" for rule in rules)


QMP_CHARDEV_ID = "qmp"


def qmp_option(socket_path: Path) -> str:
    """`-qmp` on a unix socket, in a directory only the user can enter (0700)."""
    if not isinstance(socket_path, Path):
        raise TypeError(f"QMP's unix socket must be a Path, not {socket_path!r}")
    return f"unix:{qemu_escape(socket_path)},server=on,wait=off"


def qmp_argv(address: Path | NamedPipeAddress) -> list[str]:
    r"""QEMU's monitor where only the user running Pinnace can send it commands. Never TCP: a
    loopback port is open to every local user, and to the VM's own containers (user networking
    maps 10.0.2.2 to the host's 127.0.0.1).

    Unix hosts: a unix socket (see qmp_option).

    Windows (asyncio has no AF_UNIX there): a named pipe that QEMU creates. `-chardev pipe,id=,path=`
    is QEMU's pipe backend; on Windows (chardev/char-pipe.c) it calls CreateNamedPipe on
    \.\pipe\<path> (so `path` is the name without that prefix) with PIPE_ACCESS_DUPLEX, a single
    instance and no security attributes, then waits in QEMU's startup until one client connects.
    A pipe's default DACL grants full control to SYSTEM, Administrators and the creator owner (the
    user who ran QEMU), and only read access to Everyone and Anonymous: another user may open it
    read-only but can never write a command. Nothing in the VM can open a host pipe.
    `-mon chardev=qmp,mode=control` puts QMP (not the human monitor) on that chardev; it is what
    `-qmp pipe:<path>` abbreviates, spelled out so the pipe's options stay visible.
    """
    if isinstance(address, NamedPipeAddress):
        return [
            "-chardev", f"pipe,id={QMP_CHARDEV_ID},path={qemu_escape(address.short_name)}",
            "-mon", f"chardev={QMP_CHARDEV_ID},mode=control",
        ]  # fmt: skip
    return ["-qmp", qmp_option(address)]


def build_argv(qemu: Path, spec: MachineSpec, accel: str, host_os: str) -> list[str]:
    """The full QEMU argv for the instance VM."""
    argv = _base_argv(qemu, spec.name, spec.arch, accel, host_os, spec.cpus, spec.memory_mib,
                      shared_memory=needs_shared_memory(spec.shares), firmware=spec.firmware)
    argv += [
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", f"{spec.cmdline} {console_arg(spec.arch)}".strip(),
        "-drive", f"if=none,id=root,file={qemu_escape(spec.rootfs)},format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=root,serial=pinnace-root",
        # werror=enospc: a full host disk pauses the VM (the agent reports it, resumes when there
        # is room) instead of failing writes inside the guest's filesystem.
        "-drive",
        f"if=none,id=data,file={qemu_escape(spec.data_disk)},format=qcow2,"
        "discard=unmap,detect-zeroes=unmap,cache=writeback,werror=enospc,rerror=report",
        "-device", "virtio-blk-pci,drive=data,serial=pinnace-data",
        "-netdev", netdev_option(spec),
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        # The RTC follows the host's wall clock, through a VM pause and a host sleep: the guest's
        # clock service (vmimage/guest/clock) steps the guest's time back onto it.
        "-rtc", "base=utc,clock=host",
        "-device", "virtio-balloon-pci,free-page-reporting=on",
    ]  # fmt: skip
    argv += share_argv(spec.shares, spec.share_socket_dir)
    for fw_name, fw_file in spec.fw_cfg:
        argv += ["-fw_cfg", f"name={qemu_escape(fw_name)},file={qemu_escape(fw_file)}"]
    argv += [
        "-chardev", f"file,id=serial0,path={qemu_escape(spec.serial_log)}",
        "-serial", "chardev:serial0",
        *qmp_argv(spec.qmp_socket),
        "-pidfile", str(spec.pidfile),
    ]  # fmt: skip
    return argv


def probe_argv(qemu: Path, arch: str, accel: str, kernel: Path, initrd: Path, host_os: str) -> list[str]:
    """A throwaway 1-CPU VM whose /init prints PROBE_MARKER and powers off; proves `accel` boots."""
    argv = _base_argv(qemu, "probe", arch, accel, host_os, 1, 256)
    argv += [
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        # not quiet: the kernel's first lines tell a hung accelerator from a slow one (accel.SILENT_HANG_S)
        "-append", f"{console_arg(arch)} pinnace.probe=1 panic=-1",
        "-serial", "stdio",
    ]  # fmt: skip
    return argv
