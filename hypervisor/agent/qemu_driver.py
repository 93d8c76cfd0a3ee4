"""The QEMU driver: everything about the QEMU process of one instance and nothing about the engine.

It checks QEMU and the guest image, chooses the accelerator, prepares keys, shares, fw_cfg files
and the data disk, builds the argv, spawns QEMU (and a virtiofsd per virtiofs share), connects
QMP, follows the boot on the serial console, adopts a QEMU that outlived its agent, and stops one:
ACPI powerdown -> QMP quit -> terminate. It reports progress and facts to the status board and
raises PinnaceError subclasses (with their cause) on failure; the agent decides the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hypervisor import accel, bootlog, disk, mounts, process, virtiofsd
from hypervisor.agent import engine_setup, guest_image
from hypervisor.agent.status_board import StatusBoard
from hypervisor.errors import MachineError, MonitorError, PinnaceError
from hypervisor.hostinfo import guest_arch, host_arch
from hypervisor.keys import authorized_keys_line, ensure_instance_keys
from hypervisor.monitor import Monitor
from hypervisor.paths import Paths
from hypervisor.platform import Platform
from hypervisor.qemu_binary import QemuBinary, find_firmware, find_qemu, find_qemu_img
from hypervisor.settings import HostFacts, Settings
from hypervisor.settings import load as load_settings
from hypervisor.spec import FIRMWARE, MachineSpec, build_argv, probe_argv

log = logging.getLogger("pinnace.agent")

POWERDOWN_GRACE_S = 15.0  # system_powerdown -> the guest's clean poweroff; then quit; then kill
QUIT_GRACE_S = 3.0
QMP_CALL_TIMEOUT_S = 5.0  # a QMP command to a paused or dying QEMU must never stall a stop
READY_TIMEOUT_S = {"tcg": 240.0}
READY_TIMEOUT_DEFAULT_S = 90.0


def ready_timeout(accel_name: str) -> float:
    """How long a boot may take to an answering engine, for this accelerator."""
    return READY_TIMEOUT_S.get(accel_name, READY_TIMEOUT_DEFAULT_S)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _exit_event(pid: int) -> bool:
    """Wait for `pid` to exit without waking up in between (Linux pidfd: readable at its exit);
    False where the host has none, and the caller polls instead. An idle agent costs no CPU."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return False
    try:
        fd = opener(pid)
    except ProcessLookupError:
        return True  # already gone
    except OSError:
        return False
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return True


@dataclass(frozen=True)
class Machine:
    """What the engine link needs of a running VM: where its sshd answers and the pinned keys."""

    pid: int
    ssh_port: int
    host_public: str
    client_key: Path
    accel: str


class QemuDriver:
    def __init__(self, paths: Paths, board: StatusBoard, platform: Platform,
                 env: Mapping[str, str] | None = None) -> None:
        self.paths, self.board, self.platform = paths, board, platform
        self.env = os.environ if env is None else env
        self.proc: subprocess.Popen[bytes] | None = None  # our child; None for an adopted QEMU
        self.pid: int | None = None
        self.monitor: Monitor | None = None
        self.virtiofsds: list[virtiofsd.Running] = []  # the daemons this driver started
        self.expect_exit = False  # a stop or a failure we caused: QEMU's exit is no news
        self.guest_shutdown = False
        self.paused = False  # QEMU has the VM stopped (QMP STOP without a RESUME yet)
        self.qemu_log = paths.log_dir / "qemu.log"
        self.qemu_log_offset = bootlog.SerialTail.end_of(self.qemu_log)
        self.engine_setup: engine_setup.EngineSetup | None = None  # this boot's engine files
        # Waiting for and ending processes never queues behind engine or SSH calls that a dead or
        # paused guest left hanging in the loop's default executor.
        self._process_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qemu-driver")

    async def _offload(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._process_pool, fn, *args)

    # --- booting ---------------------------------------------------------------------------

    def preflight(self) -> None:
        """Before an image is chosen: a missing QEMU is the first thing to say (MachineError)."""
        self.board.stage("checking QEMU and the image")
        find_qemu(guest_arch(self.env), self.platform.os_name, self.env, shutil.which, Path.is_file)

    def locate_image(self) -> guest_image.GuestImage:
        """The installed image for this instance's guest architecture (not yet verified)."""
        return guest_image.locate(guest_arch(self.env))

    async def boot(self, image: guest_image.GuestImage | None = None) -> Machine:
        """Check, prepare and spawn QEMU booting `image` (default: the installed one, verified
        here; a slot's image comes verified); returns once QMP answers (the guest still boots)."""
        loop = asyncio.get_running_loop()
        self.expect_exit = self.guest_shutdown = self.paused = False
        self.board.stage("checking QEMU and the image")
        arch = guest_arch(self.env)  # the host's, or PINNACE_ARCH's (a foreign guest runs under TCG)
        os_name = self.platform.os_name
        qemu_path = find_qemu(arch, os_name, self.env, shutil.which, Path.is_file)
        qemu = await loop.run_in_executor(None, QemuBinary.probe, qemu_path)
        qemu_img = find_qemu_img(os_name, self.env, shutil.which, Path.is_file, near=qemu_path)
        settings = self._load_settings(qemu_img)
        if image is None:
            image = await loop.run_in_executor(None, guest_image.locate, arch)
            await loop.run_in_executor(None, guest_image.verify, image)
        elif image.manifest.arch != arch:
            raise guest_image.ImageError(f"the image in {image.directory} is for {image.manifest.arch}, not {arch}")
        kernel, initrd = image.path("kernel"), image.path("initrd")

        self.board.stage("choosing the accelerator")
        identity = accel.ProbeIdentity(socket.gethostname(), str(qemu.path), qemu.version_text,
                                       image.manifest.artifacts["kernel"].sha256)

        def probe(name: str) -> accel.ProbeResult:
            silent = None if name == "tcg" else accel.SILENT_HANG_S
            return accel.run_probe(probe_argv(qemu.path, arch, name, kernel, initrd, os_name), silent_s=silent)

        verdict = await loop.run_in_executor(
            None, lambda: accel.choose(settings.accel, os_name, qemu.accelerators, probe,
                                       accel.ProbeCache(self.paths.probe_cache), identity,
                                       guest_arch=arch, host_arch=host_arch()))
        self.board.update(accel=verdict.accel, accel_reason=verdict.reason, accel_warning=verdict.warning or "")
        if verdict.warning:
            log.warning("%s", verdict.warning)

        keys = ensure_instance_keys(self.paths.keys_dir, self.paths.instance)
        rt = self.paths.runtime_dir
        self.platform.write_private_text(rt / "authorized_keys", authorized_keys_line(keys.client_public) + "\n")
        self.platform.write_private_text(rt / "hostname", f"pinnace-{self.paths.instance}\n")
        self.engine_setup = await loop.run_in_executor(
            None, engine_setup.prepare, self.paths, settings, self.platform, self.env)
        shares, daemon = await loop.run_in_executor(None, self._plan_shares, settings)
        self.platform.write_private_text(self.paths.shares_record, mounts.fw_cfg_text(shares))
        done = disk.ensure(qemu_img, self.paths.data_disk, settings.disk_gib)
        log.info("data disk %s: %s (%d GiB)", self.paths.data_disk, done, settings.disk_gib)
        # The guest formats the disk only when told it is new: a damaged filesystem is repaired or
        # refused, never replaced.
        fresh = done == "created" or disk.is_blank(qemu_img, self.paths.data_disk)
        self.platform.write_private_text(rt / "data_fresh", "1\n" if fresh else "0\n")

        port = free_loopback_port()
        self.platform.write_private_text(self.paths.ssh_port_file, str(port))
        firmware = self._firmware(qemu.path, arch, verdict.accel, os_name)
        spec = MachineSpec(
            name=self.paths.instance, arch=arch, cpus=settings.cpus, memory_mib=settings.memory_mib,
            kernel=kernel, initrd=initrd, rootfs=image.path("rootfs"), cmdline=image.cmdline,
            data_disk=self.paths.data_disk, ssh_host_port=port,
            fw_cfg=(("opt/pinnace/ssh_host_key", keys.host_key),
                    ("opt/pinnace/authorized_keys", rt / "authorized_keys"),
                    ("opt/pinnace/hostname", rt / "hostname"),
                    ("opt/pinnace/data_fresh", rt / "data_fresh"),
                    (mounts.FW_CFG_NAME, self.paths.shares_record),
                    *self.engine_setup.fw_cfg),
            serial_log=self.paths.serial_log, qmp_socket=self.qmp_address(fresh=True),
            pidfile=self.paths.qemu_pidfile, shares=tuple(shares), share_socket_dir=self.paths.socket_dir,
            firmware=firmware,
        )
        self.board.update(cpus=settings.cpus, memory_mib=settings.memory_mib, disk_gib=settings.disk_gib,
                          ssh_port=port)
        argv = build_argv(qemu.path, spec, verdict.accel, os_name)
        log.info("starting QEMU: %s", " ".join(argv))
        self.paths.qmp_socket.unlink(missing_ok=True)
        if daemon is not None:
            self.board.stage("starting virtiofsd")
            self.virtiofsds = await loop.run_in_executor(
                None, lambda: virtiofsd.start(daemon, shares, self.paths.socket_dir, rt, self.paths.log_dir))
        self.board.stage("booting kernel")
        self.qemu_log_offset = bootlog.SerialTail.end_of(self.qemu_log)
        self.proc = process.spawn(argv, self.qemu_log)
        self.pid = self.proc.pid
        self.board.update(qemu_pid=self.pid)
        await self._connect_monitor()
        return Machine(self.pid, port, keys.host_public, keys.client_key, verdict.accel)

    def _load_settings(self, qemu_img: Path) -> Settings:
        current = disk.virtual_size_gib(qemu_img, self.paths.data_disk)
        return load_settings(self.paths.settings_file, HostFacts.detect(), current)

    @staticmethod
    def _firmware(qemu: Path, arch: str, accel_name: str, os_name: str) -> Path | None:
        """spec.FIRMWARE for this guest and accelerator, if this QEMU install ships it."""
        name = FIRMWARE.get((arch, accel_name))
        if name is None:
            return None
        found = find_firmware(qemu, name, os_name)
        if found is None:
            log.info("firmware: %s is not beside %s; QEMU's default firmware boots the VM", name, qemu)
        return found

    def _plan_shares(self, settings: Settings) -> tuple[list[mounts.GuestShare], virtiofsd.Daemon | None]:
        """The shares and their transport; the virtiofsd to start for them (None for 9p)."""
        os_name = self.platform.os_name
        # leftovers of a QEMU that died with its agent
        virtiofsd.stop(self.paths.runtime_dir, socket_dir=self.paths.socket_dir)
        daemon, problem = None, None
        if os_name == "linux" and settings.share_transport != "9p" and settings.shares:
            daemon, problem = virtiofsd.locate()
        caveat = virtiofsd.shared_mmap_problem(daemon) if daemon is not None else None
        transport, why = mounts.choose_transport(settings.share_transport, os_name, problem, caveat)
        shares = mounts.plan(settings.shares, os_name, transport=transport)
        log.info("shared folders over %s (%s)%s", transport, why,
                 f", virtiofsd {daemon.path} ({daemon.flavour})" if transport == "virtiofs" and daemon else "")
        self.board.update(shares=[{"path": s.path, "read_only": s.read_only, "transport": s.transport}
                                  for s in shares], share_transport_reason=why)
        return shares, daemon if mounts.needs_shared_memory(shares) else None

    async def wait_for_guest(self, deadline: float) -> None:
        """Follow the serial console's stage lines until the guest says it is ready."""
        tail = bootlog.SerialTail(self.paths.serial_log, 0)
        while time.monotonic() < deadline:
            for event in tail.events():
                if event.kind == "failed":
                    if event.value.startswith("data disk"):  # kept as it is: say where, and the way out
                        raise MachineError(f"the guest failed to boot: {event.value}; the disk is kept at "
                                           f"{self.paths.data_disk} (`pinnace reset` starts over with a new one)")
                    raise MachineError(f"the guest failed to boot: {event.value} (see {self.paths.serial_log})")
                if event.kind == "ready":
                    return
                self.board.stage(bootlog.STAGE_LABELS.get(event.value, event.value))
            if not self.alive():
                raise MachineError(self.exit_reason())
            await asyncio.sleep(0.1)
        raise MachineError(f"the engine was not ready after {ready_timeout(self.board.get('accel')):.0f} s "
                           f"while '{self.board.get('stage')}' (see {self.paths.serial_log})")

    # --- adopting --------------------------------------------------------------------------

    async def adopt(self, pid: int) -> Machine:
        """A QEMU of ours that outlived its agent: connect to it instead of booting a second VM."""
        log.info("adopting running QEMU pid %d", pid)
        self.expect_exit = self.guest_shutdown = self.paused = False
        self.pid, self.proc = pid, None
        self.engine_setup = None
        self.board.update(qemu_pid=pid)
        keys = ensure_instance_keys(self.paths.keys_dir, self.paths.instance)
        try:
            port = int(self.paths.ssh_port_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise MachineError(f"no SSH port recorded in {self.paths.ssh_port_file}", exc) from exc
        self.board.update(ssh_port=port)
        await self._connect_monitor()
        return Machine(pid, port, keys.host_public, keys.client_key, str(self.board.get("accel")))

    async def hmp(self, command_line: str) -> str:
        """A human-monitor command (published ports' hostfwd), bounded like every QMP call."""
        monitor = self.monitor
        if monitor is None:
            raise MonitorError("QEMU's monitor is not connected")
        try:
            return await asyncio.wait_for(monitor.hmp(command_line), QMP_CALL_TIMEOUT_S)
        except TimeoutError as exc:
            raise MonitorError(f"QEMU did not answer {command_line.split()[0]} in {QMP_CALL_TIMEOUT_S:.0f} s",
                               exc) from exc

    # --- watching --------------------------------------------------------------------------

    async def _connect_monitor(self) -> None:
        self.monitor = Monitor(self.qmp_address(fresh=False), f"pinnace-{self.paths.instance}")
        await self.monitor.connect(timeout=10.0, gone=self._gone_reason)

    async def follow_events(self, on_event: Callable[[str, dict], None] = lambda name, data: None) -> None:
        """QMP events, logged and handed to `on_event`; a guest poweroff is remembered so QEMU's
        exit is explained, a pause so a stop does not wait on a guest that cannot run."""
        monitor = self.monitor
        if monitor is None:
            return
        with contextlib.suppress(Exception):
            repeated: tuple[str, dict] | None = None
            async for name, data in monitor.events():
                if (name, data) != repeated:  # a full disk raises one BLOCK_IO_ERROR per request
                    log.info("QMP event %s%s", name, f" {data}" if data else "")
                repeated = (name, data) if name == "BLOCK_IO_ERROR" else None
                if name == "SHUTDOWN":
                    self.guest_shutdown = True
                elif name == "STOP":
                    self.paused = True
                elif name == "RESUME":
                    self.paused = False
                try:
                    on_event(name, data)
                except Exception:  # noqa: BLE001 - a handler's bug must not end the event stream
                    log.exception("handling QMP event %s", name)

    async def pause(self) -> None:
        """QMP stop: the VM stops running and keeps its memory (the user's pause)."""
        monitor = self.monitor
        if monitor is None:
            raise MonitorError("QEMU's monitor is not connected")
        try:
            await asyncio.wait_for(monitor.execute("stop"), QMP_CALL_TIMEOUT_S)
        except TimeoutError as exc:
            raise MonitorError(f"QEMU did not answer stop in {QMP_CALL_TIMEOUT_S:.0f} s", exc) from exc

    async def resume(self) -> None:
        """QMP cont: a paused VM runs again (it pauses again at once if its disk is still full)."""
        monitor = self.monitor
        if monitor is None:
            raise MonitorError("QEMU's monitor is not connected")
        try:
            await asyncio.wait_for(monitor.cont(), QMP_CALL_TIMEOUT_S)
        except TimeoutError as exc:
            raise MonitorError(f"QEMU did not answer cont in {QMP_CALL_TIMEOUT_S:.0f} s", exc) from exc

    async def query_paused(self) -> bool:
        """Whether QEMU has the VM paused now (an adopted VM may have been paused before we came)."""
        monitor = self.monitor
        if monitor is None:
            return False
        try:
            state = await asyncio.wait_for(monitor.run_state(), QMP_CALL_TIMEOUT_S)
        except (TimeoutError, PinnaceError) as exc:
            log.warning("query-status: %s", exc or "no answer")
            return False
        self.paused = state not in ("running", "")
        return self.paused

    async def wait_exit(self) -> str:
        """Returns why QEMU exited, once it has (a stop's own exit included: see expect_exit)."""
        pid, proc = self.pid, self.proc
        if pid and await _exit_event(pid):
            if proc is not None:
                proc.poll()  # reap our child, so its exit code explains the exit
            return self.exit_reason()
        while self.platform.alive(pid):  # no pidfd (macOS, Windows, old Linux): poll
            if proc is not None and proc.poll() is not None:
                break
            await asyncio.sleep(0.25)
        return self.exit_reason()

    async def watch_virtiofsds(self) -> None:
        """A daemon that exits while QEMU runs takes its share away from the guest: say so."""
        started, reported = self.virtiofsds, set()
        while started and started is self.virtiofsds and self.alive():
            for running in virtiofsd.dead(started):
                if running.proc.pid not in reported and not self.expect_exit:
                    reported.add(running.proc.pid)
                    log.error("virtiofsd for %s exited (code %s) while the VM runs: the share is gone until "
                              "a restart (see %s)", running.share.path, running.proc.returncode, running.log)
            await asyncio.sleep(1.0)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.platform.alive(self.pid)

    def _gone_reason(self) -> str | None:
        """Why QEMU is gone, or None while it runs."""
        return None if self.alive() else self.exit_reason()

    def exit_reason(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        if self.guest_shutdown:
            return "the guest powered off by itself"
        if code is not None and code < 0:
            what = f"killed by signal {-code}"
        elif code is not None:
            what = f"exit code {code}"
        else:
            what = f"pid {self.pid} is gone"
        tail = [ln for ln in bootlog.SerialTail(self.qemu_log, self.qemu_log_offset).read_lines() if ln.strip()]
        return f"QEMU exited unexpectedly ({what})" + (f": {tail[-1]}" if tail else "")

    def qmp_address(self, fresh: bool) -> Path | Monitor.PipeAddress:
        """The unix socket; where the platform has none for QEMU (Windows) the named pipe QEMU
        creates (never a TCP port: see spec.qmp_argv). To connect (not `fresh`), the pipe address
        names the QEMU expected to serve it, so a pipe someone else created first is refused."""
        if self.platform.qmp_over_unix_socket:
            return self.paths.qmp_socket
        return Monitor.PipeAddress(self.paths.named_pipe("qmp"), server_pid=None if fresh else self.pid)

    # --- stopping --------------------------------------------------------------------------

    async def _qmp(self, call: str) -> None:
        """A QMP command that may not answer (paused, dying or wedged QEMU): bounded, never raised."""
        monitor = self.monitor
        if monitor is None:
            return
        try:
            await asyncio.wait_for(getattr(monitor, call)(), QMP_CALL_TIMEOUT_S)
        except (TimeoutError, PinnaceError, OSError) as exc:
            log.warning("QMP %s: %s", call, exc or "no answer")

    async def stop(self, grace: float = POWERDOWN_GRACE_S) -> None:
        """Clean stop: ACPI powerdown and wait for the guest, then QMP quit, then terminate."""
        self.expect_exit = True
        pid = self.pid or 0
        if self.alive():
            if self.paused:  # a paused guest cannot see the power button: let it run to hear it
                await self._qmp("cont")
            await self._qmp("powerdown")
            clean = await self._wait_powered_off(pid, grace)
            if not clean:
                log.warning("guest did not power off within %.0f s%s; sending quit", grace,
                            " (paused again: its disk is still full)" if self.paused else "")
                await self._qmp("quit")
                clean = await self._offload(self.platform.wait_exit, pid, QUIT_GRACE_S)
            if not clean:
                log.warning("QEMU did not quit; killing it")
                await self._offload(self.platform.terminate, pid, 3.0)
        await self.release()

    async def _wait_powered_off(self, pid: int, grace: float) -> bool:
        """Until QEMU exits after a powerdown, for `grace` s; cut short when the VM pauses again
        (a full disk): the guest cannot finish, and waiting would only delay the stop."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if await self._offload(self.platform.wait_exit, pid, 0.25):
                return True
            if self.paused:
                await asyncio.sleep(0.5)  # a pause the cont above has not yet lifted
                if self.paused:
                    return False
        return False

    async def kill(self) -> None:
        """End QEMU at once (a boot that failed after spawning it), then release what is left."""
        self.expect_exit = True
        if self.alive() and self.pid:
            await self._offload(self.platform.terminate, self.pid, 3.0)
        await self.release()

    async def detach(self) -> None:
        """Let go of a QEMU without touching it (a failed adoption must never kill a healthy VM)."""
        self.expect_exit = True
        await self._close_monitor()
        self.proc, self.pid = None, None

    async def release(self) -> None:
        """After QEMU exited: reap it, end its virtiofsds, close QMP, remove its pidfile and socket."""
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await self._offload(self.proc.wait, 5.0)
            self.proc = None
        started, self.virtiofsds = self.virtiofsds, []
        try:
            await self._offload(lambda: virtiofsd.stop(self.paths.runtime_dir, started,
                                                       socket_dir=self.paths.socket_dir))
        except OSError as exc:
            log.warning("stopping virtiofsd: %s", exc)
        await self._close_monitor()
        if not self.alive():
            for stale in (self.paths.qemu_pidfile, self.paths.qmp_socket):
                with contextlib.suppress(OSError):
                    stale.unlink(missing_ok=True)
        self.pid = None
        self.board.update(qemu_pid=None)

    async def _close_monitor(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            try:
                await asyncio.wait_for(monitor.close(), QMP_CALL_TIMEOUT_S)
            except (TimeoutError, MonitorError, OSError) as exc:
                log.warning("closing QMP: %s", exc or "no answer")
