"""A stock Debian 13 VM as a same-run baseline for the benchmarks: systemd, docker.io, OpenSSH and
Debian's generic kernel, booted the way Lima boots a distro VM (q35, virtio disk and network, QEMU
user networking, the distro's own kernel and initrd passed directly with -kernel/-initrd).

`ensure()` builds it once with debootstrap (cached under the user cache dir, in a directory named
by a build key: a change to the version, packages or configuration below builds a new one) and
returns its paths; `boot()` starts it with -snapshot (nothing a run does reaches the disk) and
waits until `docker version` answers over SSH. The build boots the disk once without -snapshot and
powers it off cleanly, so every measured boot is an ordinary later boot of an installed system (not
a first boot: AppArmor's compiled-profile cache, for one, took 16 s to fill under TCG).

Pure builders (argv, configuration files, parsers) are kept apart from what runs processes, so
tests/unit/test_distrovm.py can pin them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmimage import locations

# Bump to rebuild even when nothing below changed (e.g. to pick up the mirror's security updates).
VERSION = "2"
SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# bookworm's debian-archive-keyring (2023.3+deb12u2) carries trixie's archive keys; vmimage uses it too.
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Installed with apt's defaults (Recommends too), as `apt install` on a stock system would.
PACKAGES = ("systemd", "systemd-sysv", "docker.io", "openssh-server", "linux-image-amd64")
DISK_SIZE_MIB = 8192
CMDLINE = "root=/dev/vda rw console=ttyS0 quiet"
TB_SIZE_MIB = 256  # TCG's translation buffer; hypervisor/spec.py gives Pinnace the same ("tcg,tb-size=256")
QEMU = Path("/usr/bin/qemu-system-x86_64")
HOSTNAME = "distrovm"
BINDS = ("proc", "sys", "dev", "dev/pts")
CHROOT_ENV = {"HOME": "/root", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "DEBIAN_FRONTEND": "noninteractive"}
# Polled over one multiplexed SSH connection (a new OpenSSH handshake costs the guest ~1.4 s of CPU
# under TCG, the docker CLI ~1 s), so the polling slows the boot it measures as little as it can:
# the cheap systemctl check (docker.service is Type=notify: active = API up) gates `docker version`.
READY_COMMAND = "systemctl is-active --quiet docker.service && docker version --format '{{.Server.Version}}'"


# ---------------------------------------------------------------- pure builders


def config_files() -> dict[str, str]:
    """Files written into the root (relative path -> text), apart from the SSH key and machine-id."""
    return {
        # QEMU user networking hands out 10.0.2.15 by DHCP (gateway 10.0.2.2, DNS 10.0.2.3).
        "etc/systemd/network/20-wired.network": "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n",
        "etc/resolv.conf": "nameserver 10.0.2.3\n",
        "etc/fstab": "/dev/vda / ext4 errors=remount-ro 0 1\n",
        "etc/hostname": f"{HOSTNAME}\n",
        "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "etc/apt/sources.list.d/debian.sources": sources_text(),
        # No swap partition to resume from: saves initramfs-tools' probing and its warning.
        "etc/initramfs-tools/conf.d/resume": "RESUME=none\n",
    }


def sources_text(mirror: str = MIRROR, security: str = SECURITY_MIRROR, suite: str = SUITE) -> str:
    """deb822 sources as a stock install has them: the release, its updates and security."""
    return (f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n"
            f"Signed-By: {KEYRING}\n\n"
            f"Types: deb\nURIs: {security}\nSuites: {suite}-security\nComponents: main\n"
            f"Signed-By: {KEYRING}\n")


def build_key() -> str:
    """Names the cached build: changes with VERSION and with anything that shapes the image."""
    shape = {"version": VERSION, "suite": SUITE, "mirror": MIRROR, "packages": PACKAGES,
             "disk_mib": DISK_SIZE_MIB, "files": config_files()}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
    return f"{SUITE}-v{VERSION}-{digest}"


def debootstrap_argv(target: Path, suite: str = SUITE, mirror: str = MIRROR) -> list[str]:
    """debootstrap's default variant (Priority required + important: a stock base system)."""
    return ["debootstrap", "--arch=amd64", f"--keyring={KEYRING}", suite, str(target), mirror]


def chroot_argv(root: Path, *argv: str) -> list[str]:
    return ["chroot", str(root), "env", "-i", *[f"{k}={v}" for k, v in CHROOT_ENV.items()], *argv]


def apt_install_argv(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    return ["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", *packages]


def mkfs_argv(root: Path, image: Path, size_mib: int = DISK_SIZE_MIB) -> list[str]:
    """ext4 filled from a directory (no loop mount). Inode tables and journal initialised now, so
    the guest's ext4lazyinit does not write them in the background on every (-snapshot) boot."""
    return ["mkfs.ext4", "-q", "-F", "-L", "distrovm-root", "-E", "lazy_itable_init=0,lazy_journal_init=0",
            "-d", str(root), str(image), f"{size_mib}M"]


def accel_option(accel: str = "tcg", tb_size_mib: int = TB_SIZE_MIB) -> str:
    return f"tcg,tb-size={tb_size_mib}" if accel == "tcg" else accel


class GuestPanicked(RuntimeError):
    """The distro VM's kernel panicked while booting (not Pinnace's doing: worth another try)."""


def qemu_argv(vm: DistroVM, port: int, serial_log: Path, cpus: int = 2, memory_mib: int = 2048,
              accel: str = "tcg", tb_size_mib: int = TB_SIZE_MIB, qemu: Path = QEMU,
              snapshot: bool = True) -> list[str]:
    """Lima-style: q35, virtio disk/net/rng, user networking with SSH on a loopback port, direct
    kernel boot. -snapshot keeps the disk as built (only the build's first boot goes without)."""
    return [
        str(qemu),
        "-name", "distrovm",
        "-machine", "q35",
        "-accel", accel_option(accel, tb_size_mib),
        "-cpu", "max" if accel == "tcg" else "host",
        "-smp", str(cpus),
        "-m", str(memory_mib),
        "-kernel", str(vm.kernel),
        "-initrd", str(vm.initrd),
        "-append", CMDLINE,
        "-drive", f"file={str(vm.disk).replace(',', ',,')},if=virtio,format={vm.disk_format}",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
        "-nographic",
        "-monitor", "none",
        "-serial", f"file:{serial_log}",
        *(["-snapshot"] if snapshot else []),
    ]  # fmt: skip


def ssh_argv(key: Path, port: int, command: str, connect_timeout: int = 10, control: Path | None = None) -> list[str]:
    """OpenSSH to the guest's root; with `control`, connections share one master (ControlMaster)."""
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=300"] if control else []
    return [
        "ssh", "-i", str(key), "-p", str(port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={connect_timeout}",
        *mux,
        "root@127.0.0.1", command,
    ]  # fmt: skip


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {field: KiB}."""
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    return values


def used_mib(meminfo: dict[str, int]) -> float:
    """Guest memory in use: MemTotal - MemAvailable."""
    return (meminfo["MemTotal"] - meminfo["MemAvailable"]) / 1024


def vmrss_mib(status_text: str) -> float:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError("no VmRSS line")


def code_buffer_rss_mib(smaps_text: str) -> float:
    """Resident size of TCG's code buffer: QEMU maps it anonymous, private and writable+executable
    (guard pages split it into one rwx mapping per region); nothing else in QEMU is rwx."""
    total_kib, in_buffer = 0, False
    for line in smaps_text.splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            perms, path = head[1], head[5] if len(head) > 5 else ""
            in_buffer = perms.startswith("rwx") and not path
        elif in_buffer and line.startswith("Rss:"):
            total_kib += int(line.split()[1])
    return total_kib / 1024


def qemu_memory(pid: int) -> tuple[float, float]:
    """(VmRSS, resident part of TCG's code buffer) of a running QEMU, MiB."""
    rss = vmrss_mib(Path(f"/proc/{pid}/status").read_text())
    return rss, code_buffer_rss_mib(Path(f"/proc/{pid}/smaps").read_text())


# ---------------------------------------------------------------- the cached build


@dataclass(frozen=True)
class DistroVM:
    directory: Path
    disk: Path
    kernel: Path
    initrd: Path
    ssh_key: Path
    info: dict = field(default_factory=dict, compare=False)
    disk_format: str = "qcow2"
    build_seconds: float | None = None  # set when this call built it


def base_dir() -> Path:
    return locations.cache_dir() / "distrovm"


def _load(directory: Path, build_seconds: float | None = None) -> DistroVM:
    info = json.loads((directory / "info.json").read_text())
    return DistroVM(directory=directory, disk=directory / "disk.qcow2", kernel=directory / "vmlinuz",
                    initrd=directory / "initrd.img", ssh_key=directory / "id_ed25519", info=info,
                    build_seconds=build_seconds)


def ensure(log=print) -> DistroVM:
    """The cached VM, built first if this build key has none (10-20 min: downloads from the mirror)."""
    base = base_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / build_key()
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "info.json").is_file():
            return _load(final)
        log(f"building the Debian 13 baseline VM into {final} (once; 10-20 min)")
        t0 = time.monotonic()
        work = base / (final.name + ".build")
        _remove_tree(work)
        work.mkdir()
        try:
            _build(work)
        except BaseException:
            _unmount_all(work / "root")
            raise
        _remove_tree(work / "root")
        first = _first_boot(_load(work))
        seconds = time.monotonic() - t0
        info = json.loads((work / "info.json").read_text())
        info["first_boot_ready_seconds"] = round(first, 1)
        info["build_seconds"] = round(seconds, 1)
        (work / "info.json").write_text(json.dumps(info, indent=1) + "\n")
        work.rename(final)
        log(f"built in {seconds / 60:.1f} min: {info}")
        return _load(final, seconds)


class _Step:
    def __init__(self, logfile: Path) -> None:
        self.logfile = logfile

    def __call__(self, argv: list[str], timeout: float = 1800) -> str:
        with open(self.logfile, "a") as out:
            out.write(f"\n$ {' '.join(argv)}\n")
            out.flush()
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout, check=False)
            out.write(proc.stdout)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-25:])
            raise RuntimeError(f"distrovm build step failed ({proc.returncode}): {' '.join(argv)}\n{tail}\n"
                               f"(full log: {self.logfile})")
        return proc.stdout


def _build(work: Path) -> None:
    root = work / "root"
    step = _Step(work / "build.log")
    step(debootstrap_argv(root), timeout=3600)

    for rel, text in config_files().items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(text)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    # A fixed machine-id: every -snapshot boot is then the same installed system, not a first boot.
    (root / "etc/machine-id").write_text(hashlib.sha256(build_key().encode()).hexdigest()[:32] + "\n")
    step(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pinnace-distrovm", "-f", str(work / "id_ed25519")])
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(work / "id_ed25519.pub", ssh_dir / "authorized_keys")
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    policy = root / "usr/sbin/policy-rc.d"  # no service starts inside the chroot
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)

    resolv = root / "etc/resolv.conf"
    shutil.copy("/etc/resolv.conf", resolv)  # the host's resolver while apt runs in the chroot
    for name in BINDS:
        step(["mount", "--bind", f"/{name}", str(root / name)])
    try:
        step(chroot_argv(root, "apt-get", "update", "-q"))
        step(chroot_argv(root, "apt-get", "full-upgrade", "-y", "-q", "-o", "Dpkg::Options::=--force-confold"))
        step(chroot_argv(root, *apt_install_argv()), timeout=3600)
        step(chroot_argv(root, "systemctl", "enable", "systemd-networkd.service"))
        versions = step(chroot_argv(root, "dpkg-query", "-W", "-f", "${Package} ${Version}\\n",
                                    "docker.io", "containerd", "openssh-server", "systemd", "linux-image-amd64"))
        step(chroot_argv(root, "apt-get", "clean"))
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            raise RuntimeError(f"expected one kernel in {root / 'boot'}, found {kernels}")
        release = kernels[0].name.removeprefix("vmlinuz-")
        # initramfs-tools' MODULES=most should carry what mounts /dev/vda (virtio-blk over PCI, ext4).
        listing = step(chroot_argv(root, "lsinitramfs", f"/boot/initrd.img-{release}"))
    finally:
        _unmount_all(root)
    policy.unlink()
    resolv.write_text(config_files()["etc/resolv.conf"])

    initrd = root / "boot" / f"initrd.img-{release}"
    builtin = (root / "usr/lib/modules" / release / "modules.builtin").read_text()
    missing = [m for m in ("virtio_blk", "virtio_pci", "ext4") if f"/{m}.ko" not in listing + builtin]
    if missing:
        raise RuntimeError(f"the initrd lacks {missing}: it could not mount /dev/vda")
    shutil.copy(kernels[0], work / "vmlinuz")
    shutil.copy(initrd, work / "initrd.img")

    raw = work / "disk.raw"
    step(mkfs_argv(root, raw))
    step(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "disk.qcow2")])
    raw.unlink()
    used = subprocess.run(["du", "-sm", str(root)], capture_output=True, text=True).stdout.split()[0]
    info = {"key": build_key(), "kernel": release, "root_used_mib": int(used),
            "packages": dict(line.split(" ", 1) for line in versions.splitlines() if " " in line)}
    (work / "info.json").write_text(json.dumps(info, indent=1) + "\n")


def _first_boot(vm: DistroVM, settle: float = 30) -> float:
    """Boot the new disk once, writable, let it settle, power it off cleanly; returns its boot -> ready."""
    run = start(vm, snapshot=False)
    try:
        ready = run.wait_ready()
        time.sleep(settle)
        run.ssh("systemctl poweroff", timeout=30)
        run.proc.wait(timeout=300)
    finally:
        run.stop()
    if run.proc.returncode != 0:
        raise RuntimeError(f"the first boot's QEMU ended with {run.proc.returncode}")
    return ready


def _unmount_all(root: Path) -> None:
    for name in reversed(BINDS):
        target = root / name
        if target.is_mount():
            subprocess.run(["umount", "-l", str(target)], check=False)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    _unmount_all(path / "root")
    if any((path / "root" / n).is_mount() for n in BINDS):
        raise RuntimeError(f"{path}: still mounted, not removing")
    shutil.rmtree(path)


# ---------------------------------------------------------------- running it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    vm: DistroVM
    proc: subprocess.Popen
    port: int
    workdir: Path
    started: float  # time.monotonic() just before QEMU was started
    ready_seconds: float | None = None
    engine_version: str = ""

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def control(self) -> Path:
        return self.workdir / "ssh.ctl"

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ssh_argv(self.vm.ssh_key, self.port, command, control=self.control),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 600, interval: float = 0.5) -> float:
        """Seconds from QEMU's start until `docker version` answers over SSH (polled)."""
        deadline = self.started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}): {self._diagnostics()}")
            if self.panicked():
                raise GuestPanicked(f"the distro VM's kernel panicked: {self._diagnostics()}")
            try:
                proc = self.ssh(READY_COMMAND, timeout=30)
            except subprocess.TimeoutExpired:
                proc = None
            if proc is not None and proc.returncode == 0 and proc.stdout.strip():
                self.ready_seconds = time.monotonic() - self.started
                self.engine_version = proc.stdout.strip()
                return self.ready_seconds
            if time.monotonic() > deadline:
                raise TimeoutError(f"distro VM not ready after {timeout:.0f} s: {self._diagnostics()}")
            time.sleep(interval)

    def guest_memory_mib(self) -> float:
        """MemTotal - MemAvailable in the guest."""
        proc = self.ssh("cat /proc/meminfo")
        if proc.returncode != 0:
            raise RuntimeError(f"cannot read the guest's /proc/meminfo: {proc.stderr.strip()}")
        return used_mib(parse_meminfo(proc.stdout))

    def qemu_memory(self) -> tuple[float, float]:
        """(QEMU's VmRSS, the resident part of TCG's code buffer), MiB."""
        return qemu_memory(self.proc.pid)

    def stop(self) -> None:
        """QEMU is ended outright: -snapshot means there is nothing to save."""
        if self.control.exists():  # the SSH master
            subprocess.run(["ssh", "-o", f"ControlPath={self.control}", "-O", "exit", "root@127.0.0.1"],
                           capture_output=True, timeout=15, stdin=subprocess.DEVNULL, check=False)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def panicked(self) -> bool:
        """Debian's kernel has panicked under TCG here now and then ("Fatal exception in
        interrupt"); QEMU then idles, so say so instead of waiting out the timeout."""
        return self.serial_log.exists() and "Kernel panic - not syncing" in self.serial_log.read_text(errors="replace")

    def _diagnostics(self) -> str:
        stderr = (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
        serial = self.serial_log.read_text(errors="replace").splitlines()[-15:] if self.serial_log.exists() else []
        return f"qemu stderr: {stderr or '-'}; serial tail:\n" + "\n".join(serial)


def start(vm: DistroVM, cpus: int = 2, memory_mib: int = 2048, accel: str = "tcg",
          tb_size_mib: int = TB_SIZE_MIB, snapshot: bool = True) -> Running:
    workdir = Path(tempfile.mkdtemp(prefix="pinnace-distrovm-"))
    port = free_port()
    argv = qemu_argv(vm, port, workdir / "serial.log", cpus, memory_mib, accel, tb_size_mib, snapshot=snapshot)
    with open(workdir / "qemu.stdout", "wb") as out, open(workdir / "qemu.stderr", "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return Running(vm=vm, proc=proc, port=port, workdir=workdir, started=started)


def boot(vm: DistroVM, cpus: int = 2, memory_mib: int = 2048, accel: str = "tcg",
         tb_size_mib: int = TB_SIZE_MIB, timeout: float = 600) -> Running:
    """Start the VM and return once `docker version` answers (running.ready_seconds is the time)."""
    running = start(vm, cpus, memory_mib, accel, tb_size_mib)
    try:
        running.wait_ready(timeout)
    except BaseException:
        running.stop()
        raise
    return running


if __name__ == "__main__":  # build (if needed), boot once, print the figures
    vm = ensure()
    run = boot(vm)
    try:
        print(f"ready in {run.ready_seconds:.1f} s, engine {run.engine_version}")
        print(f"guest memory used {run.guest_memory_mib():.0f} MiB; QEMU RSS / code buffer {run.qemu_memory()} MiB")
    finally:
        run.stop()
