"""The host agent: one detached process per instance that owns QEMU, the QMP connection, the
SSH transport and the engine-socket forward, and serves the control API.

The CLI and the tray are clients; either can crash or quit without harming the VM. If the agent
itself dies, QEMU keeps running and the next agent adopts it (pidfile + QMP socket).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from hypervisor import accel, bootlog, disk, engine, mounts, process, virtiofsd
from hypervisor.control import OPS, Status, decode, encode
from hypervisor.errors import (
    ControlError,
    HostKeyMismatchError,
    MachineError,
    PinnaceError,
    SSHError,
    StateError,
)
from hypervisor.forward import UnixSocketForwarder
from hypervisor.hostinfo import guest_arch, host_arch, host_os
from hypervisor.keys import authorized_keys_line, ensure_instance_keys
from hypervisor.machine import Lifecycle, State
from hypervisor.monitor import Monitor
from hypervisor.paths import Paths
from hypervisor.ports import PortPublisher
from hypervisor.qemu_binary import QemuBinary, find_qemu, find_qemu_img
from hypervisor.settings import HostFacts, Settings
from hypervisor.settings import load as load_settings
from hypervisor.spec import MachineSpec, build_argv, probe_argv
from hypervisor.ssh import GuestSSH, SSHTarget
from vmimage import locations
from vmimage import manifest as image_manifest

log = logging.getLogger("pinnace.agent")

STOP_GRACE_S = 15.0
ENGINE_RECONNECT_GRACE_S = 20.0  # system_powerdown -> guest's clean poweroff; then quit; then kill
READY_TIMEOUT_S = {"tcg": 240.0}
READY_TIMEOUT_DEFAULT_S = 90.0


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def save_state(paths: Paths, status: Status) -> None:
    tmp = paths.state_file.with_suffix(".tmp")
    write_private(tmp, json.dumps(status.to_dict(), indent=1))
    tmp.replace(paths.state_file)


def locate_image(arch: str) -> tuple[Path, image_manifest.Manifest]:
    directory = locations.default_image_dir(arch)
    for candidate in (directory, Path(sys.prefix) / "share/pinnace/images" / arch):
        try:
            m = image_manifest.load(candidate)
        except image_manifest.ManifestError:
            continue
        image_manifest.verify(candidate, m)
        return candidate, m
    raise MachineError(f"no guest image for {arch} in {directory}: run `pinnace image build` first")


class Agent:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.os = host_os()
        self.host_arch = self.arch = host_arch()
        self.lifecycle = Lifecycle()
        self.status = Status(instance=paths.instance, agent_pid=os.getpid())
        # The previous agent's last status, read before this one publishes its own over it: a
        # re-adopting agent takes the facts of the running VM (accelerator, shares) from it.
        self.previous_status: dict = {}
        with contextlib.suppress(OSError, ValueError):
            self.previous_status = json.loads(paths.state_file.read_text())
        self.watchers: set[asyncio.Queue[Status | None]] = set()
        self.proc = None
        self.monitor: Monitor | None = None
        self.ssh: GuestSSH | None = None
        self.forwarder: UnixSocketForwarder | None = None
        self.ports: PortPublisher | None = None
        self.ops = asyncio.Lock()
        self.finished = asyncio.Event()
        self.boot_task: asyncio.Task[None] | None = None
        self.virtiofsds: list[virtiofsd.Running] = []  # the daemons this agent started
        self.expect_exit = False
        self.guest_shutdown = False
        self.qemu_log = paths.log_dir / "qemu.log"
        self.qemu_log_offset = bootlog.SerialTail.end_of(self.qemu_log)
        self.lifecycle.subscribe(self._on_transition)

    # --- status publishing -----------------------------------------------------------------

    def _on_transition(self, old: State, new: State, reason: str) -> None:
        log.info("state %s -> %s %s", old.value, new.value, reason)
        self.status.state, self.status.reason = new.value, reason
        self.publish()

    def publish(self) -> None:
        save_state(self.paths, self.status)
        for queue in list(self.watchers):
            queue.put_nowait(Status.from_dict(self.status.to_dict()))

    def set_stage(self, stage: str) -> None:
        if self.status.stage != stage:
            self.status.stage = stage
            log.info("stage: %s", stage)
            self.publish()

    def to(self, state: State, reason: str = "") -> None:
        if self.lifecycle.state is not state:
            self.lifecycle.transition(state, reason)

    # --- control API -----------------------------------------------------------------------

    async def serve(self) -> asyncio.AbstractServer:
        if sys.platform == "win32":  # an owner-only named pipe instead of a unix socket
            from hypervisor.forward_windows import start_pipe_server

            return await start_pipe_server(self.handle_client, self.paths.named_pipe("control"))  # type: ignore[return-value]
        path = self.paths.control_socket
        if path.exists():
            with contextlib.suppress(OSError):
                probe = socket.socket(socket.AF_UNIX)
                probe.settimeout(0.5)
                try:
                    probe.connect(str(path))
                    raise ControlError(f"another agent already serves {path}")
                except OSError:
                    path.unlink()
                finally:
                    probe.close()
        server = await asyncio.start_unix_server(self.handle_client, path=str(path))
        path.chmod(0o600)
        return server

    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line:
                return
            try:
                op = str(decode(line).get("op"))
            except ControlError as exc:
                writer.write(encode({"ok": False, "error": str(exc)}))
                return
            if op not in OPS:
                writer.write(encode({"ok": False, "error": f"unknown operation {op!r}"}))
            elif op == "watch":
                await self._stream(writer)
            elif op == "status":
                writer.write(encode({"ok": True, "result": self.status.to_dict()}))
            else:
                try:
                    await getattr(self, f"op_{op}")()
                    writer.write(encode({"ok": True, "result": self.status.to_dict()}))
                except PinnaceError as exc:
                    writer.write(encode({"ok": False, "error": str(exc)}))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[Status | None] = asyncio.Queue()
        self.watchers.add(queue)
        try:
            queue.put_nowait(Status.from_dict(self.status.to_dict()))
            while (status := await queue.get()) is not None:
                writer.write(encode({"event": "status", "result": status.to_dict()}))
                await writer.drain()
        finally:
            self.watchers.discard(queue)

    async def op_stop(self) -> None:
        await self._cancel_boot()
        async with self.ops:
            await self.shutdown("stopped by request")
        self.finished.set()

    async def op_restart(self) -> None:
        await self._cancel_boot()
        async with self.ops:
            await self.shutdown("restarting")
            await self.boot()

    async def op_reset(self) -> None:
        await self._cancel_boot()
        async with self.ops:
            await self.shutdown("resetting")
            self.set_stage("deleting the data disk and keys")
            self.paths.data_disk.unlink(missing_ok=True)
            shutil.rmtree(self.paths.keys_dir, ignore_errors=True)
            log.info("reset: deleted %s and %s", self.paths.data_disk, self.paths.keys_dir)
            await self.boot()

    async def _cancel_boot(self) -> None:
        task = self.boot_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PinnaceError):
                await task

    # --- boot ------------------------------------------------------------------------------

    def _load_settings(self, qemu_img: Path) -> Settings:
        current = disk.virtual_size_gib(qemu_img, self.paths.data_disk)
        return load_settings(self.paths.settings_file, HostFacts.detect(), current)

    async def boot(self) -> None:
        """stopped/error -> starting -> running, or error with the failing step named."""
        loop = asyncio.get_running_loop()
        self.to(State.STARTING, "starting")
        self.status.engine_version = ""
        self.status.started_at, self.status.ready_at = time.time(), None
        self.expect_exit = self.guest_shutdown = False
        try:
            self.set_stage("checking QEMU and the image")
            env = os.environ
            self.arch = guest_arch(env)  # the host's, or PINNACE_ARCH's (a foreign guest runs under TCG)
            qemu_path = find_qemu(self.arch, self.os, env, shutil.which, Path.is_file)
            qemu = await loop.run_in_executor(None, QemuBinary.probe, qemu_path)
            qemu_img = find_qemu_img(self.os, env, shutil.which, Path.is_file, near=qemu_path)
            settings = self._load_settings(qemu_img)
            image_dir, image = locate_image(self.arch)
            if image.arch != self.arch:
                raise MachineError(f"the image in {image_dir} is for {image.arch}, not {self.arch} "
                                   f"(a foreign guest needs PINNACE_ARCH={image.arch})")
            kernel = image.path_of(image_dir, "kernel")
            initrd = image.path_of(image_dir, "initrd")

            self.set_stage("choosing the accelerator")
            identity = accel.ProbeIdentity(socket.gethostname(), str(qemu.path), qemu.version_text,
                                           image.artifacts["kernel"].sha256)

            def probe(name: str) -> accel.ProbeResult:
                return accel.run_probe(probe_argv(qemu.path, self.arch, name, kernel, initrd, self.os))

            verdict = await loop.run_in_executor(
                None, lambda: accel.choose(settings.accel, self.os, qemu.accelerators, probe,
                                           accel.ProbeCache(self.paths.probe_cache), identity,
                                           guest_arch=self.arch, host_arch=self.host_arch))
            self.status.accel, self.status.accel_reason = verdict.accel, verdict.reason
            self.status.accel_warning = verdict.warning or ""
            if verdict.warning:
                log.warning("%s", verdict.warning)

            keys = ensure_instance_keys(self.paths.keys_dir, self.paths.instance)
            rt = self.paths.runtime_dir
            write_private(rt / "authorized_keys", authorized_keys_line(keys.client_public) + "\n")
            write_private(rt / "hostname", f"pinnace-{self.paths.instance}\n")
            shares, daemon = await loop.run_in_executor(None, self._plan_shares, settings)
            write_private(rt / "shares", mounts.fw_cfg_text(shares))
            done = disk.ensure(qemu_img, self.paths.data_disk, settings.disk_gib)
            log.info("data disk %s: %s (%d GiB)", self.paths.data_disk, done, settings.disk_gib)

            port = free_loopback_port()
            write_private(self.paths.ssh_port_file, str(port))
            spec = MachineSpec(
                name=self.paths.instance, arch=self.arch, cpus=settings.cpus,
                memory_mib=settings.memory_mib, kernel=kernel, initrd=initrd,
                rootfs=image.path_of(image_dir, "rootfs"), cmdline=image.cmdline,
                data_disk=self.paths.data_disk, ssh_host_port=port,
                fw_cfg=(("opt/pinnace/ssh_host_key", keys.host_key),
                        ("opt/pinnace/authorized_keys", rt / "authorized_keys"),
                        ("opt/pinnace/hostname", rt / "hostname"),
                        (mounts.FW_CFG_NAME, rt / "shares")),
                serial_log=self.paths.serial_log, qmp_socket=self.qmp_address(fresh=True),
                pidfile=self.paths.qemu_pidfile, shares=tuple(shares),
                share_socket_dir=self.paths.socket_dir,
            )
            self.status.cpus, self.status.memory_mib = settings.cpus, settings.memory_mib
            self.status.disk_gib, self.status.ssh_port = settings.disk_gib, port
            argv = build_argv(qemu.path, spec, verdict.accel, self.os)
            log.info("starting QEMU: %s", " ".join(argv))
            self.paths.qmp_socket.unlink(missing_ok=True)
            if daemon is not None:
                self.set_stage("starting virtiofsd")
                self.virtiofsds = await loop.run_in_executor(
                    None, lambda: virtiofsd.start(daemon, shares, self.paths.socket_dir, rt, self.paths.log_dir))
            self.set_stage("booting kernel")
            self.qemu_log_offset = bootlog.SerialTail.end_of(self.qemu_log)
            self.proc = process.spawn(argv, self.qemu_log)
            self.status.qemu_pid = self.proc.pid
            if self.virtiofsds:
                asyncio.create_task(self._watch_virtiofsds(self.virtiofsds))
            await self._attach(keys.host_public, keys.client_key, port, boot_log_offset=0)
        except asyncio.CancelledError:
            raise
        except PinnaceError as exc:
            await self._fail(str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - the agent must report, never die silently
            log.exception("boot failed")
            await self._fail(f"unexpected error: {exc}")
            raise MachineError("start failed", exc) from exc

    def _plan_shares(self, settings: Settings) -> tuple[list[mounts.GuestShare], virtiofsd.Daemon | None]:
        """The shares and their transport; the virtiofsd to start for them (None for 9p)."""
        # leftovers of a QEMU that died with its agent
        virtiofsd.stop(self.paths.runtime_dir, socket_dir=self.paths.socket_dir)
        daemon, problem = None, None
        if self.os == "linux" and settings.share_transport != "9p" and settings.shares:
            daemon, problem = virtiofsd.locate()
        transport, why = mounts.choose_transport(settings.share_transport, self.os, problem)
        shares = mounts.plan(settings.shares, self.os, transport=transport)
        log.info("shared folders over %s (%s)%s", transport, why,
                 f", virtiofsd {daemon.path} ({daemon.flavour})" if transport == "virtiofs" and daemon else "")
        self.status.shares = [{"path": s.path, "read_only": s.read_only, "transport": s.transport} for s in shares]
        self.status.share_transport_reason = why
        return shares, daemon if mounts.needs_shared_memory(shares) else None

    async def _watch_virtiofsds(self, started: list[virtiofsd.Running]) -> None:
        """A daemon that exits while QEMU runs takes its share away from the guest: say so."""
        reported: set[int] = set()
        while started is self.virtiofsds and process.alive(self.status.qemu_pid):
            for running in virtiofsd.dead(started):
                if running.proc.pid not in reported and not self.expect_exit:
                    reported.add(running.proc.pid)
                    log.error("virtiofsd for %s exited (code %s) while the VM runs: the share is gone until "
                              "a restart (see %s)", running.share.path, running.proc.returncode, running.log)
            await asyncio.sleep(1.0)

    def qmp_address(self, fresh: bool) -> Path | tuple[str, int]:
        """The unix socket; on Windows a loopback port (spec.qmp_option), new for a fresh QEMU and
        read back from its file when attaching or re-adopting."""
        if self.os != "windows":
            return self.paths.qmp_socket
        if fresh:
            port = free_loopback_port()
            write_private(self.paths.qmp_port_file, str(port))
            return ("127.0.0.1", port)
        try:
            return ("127.0.0.1", int(self.paths.qmp_port_file.read_text().strip()))
        except (OSError, ValueError) as exc:
            raise MachineError(f"no QMP port recorded in {self.paths.qmp_port_file}", exc) from exc

    def _stop_virtiofsds(self) -> None:
        started, self.virtiofsds = self.virtiofsds, []
        virtiofsd.stop(self.paths.runtime_dir, started, socket_dir=self.paths.socket_dir)

    async def adopt(self, pid: int) -> None:
        """A QEMU of ours outlived its agent: take it over instead of booting a second VM."""
        log.info("adopting running QEMU pid %d", pid)
        previous = self.previous_status
        for key in ("accel", "accel_reason", "accel_warning", "cpus", "memory_mib", "disk_gib", "started_at",
                    "shares", "share_transport_reason"):
            if key in previous:
                setattr(self.status, key, previous[key])
        self.to(State.STARTING, "re-adopting the running VM")
        self.status.qemu_pid = pid
        keys = ensure_instance_keys(self.paths.keys_dir, self.paths.instance)
        port = int(self.paths.ssh_port_file.read_text().strip())
        self.status.ssh_port = port
        try:
            await self._attach(keys.host_public, keys.client_key, port,
                               boot_log_offset=bootlog.SerialTail.end_of(self.paths.serial_log), adopted=True)
        except PinnaceError as exc:
            await self._fail(str(exc))
            raise

    async def _attach(self, host_public: str, client_key: Path, port: int, boot_log_offset: int,
                      adopted: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.monitor = Monitor(self.qmp_address(fresh=False), f"pinnace-{self.paths.instance}")
        await self.monitor.connect(timeout=10.0, gone=self._gone_reason)
        asyncio.create_task(self._watch_events(self.monitor))
        asyncio.create_task(self._watch_process())
        # sshd starts well before the engine: connect while the guest boots, not after.
        self.ssh = GuestSSH(SSHTarget("127.0.0.1", port, "root", client_key, host_public, self.paths.instance))
        timeout = READY_TIMEOUT_S.get(self.status.accel, READY_TIMEOUT_DEFAULT_S)
        ssh_ready = loop.run_in_executor(None, self.ssh.wait_until_reachable, time.monotonic() + timeout)
        try:
            if not adopted:
                await self._wait_for_guest(boot_log_offset)
            self.set_stage("connecting to the engine")
            await ssh_ready
        except BaseException:
            ssh_ready.cancel()
            raise
        version = await self._engine_version(loop, deadline=time.monotonic() + timeout)
        self.status.engine_version = str(version.get("Version", ""))
        if sys.platform == "win32":  # docker's npipe:// endpoint
            from hypervisor.forward_windows import NamedPipeForwarder

            engine_endpoint = self.paths.named_pipe("docker")
            self.forwarder = NamedPipeForwarder(engine_endpoint, self._open_engine_channel, "engine")  # type: ignore[assignment]
        else:
            engine_endpoint = str(self.paths.docker_socket)
            self.forwarder = UnixSocketForwarder(self.paths.docker_socket, self._open_engine_channel, "engine")
        await loop.run_in_executor(None, self.forwarder.start)
        self.status.docker_socket = engine_endpoint
        self._start_ports(port)
        self.status.ready_at = time.time()
        self.set_stage("ready")
        self.to(State.RUNNING, "engine ready")

    def _start_ports(self, ssh_port: int) -> None:
        try:
            expose_all = load_settings(self.paths.settings_file, HostFacts.detect()).expose_ports_on_all_interfaces
        except PinnaceError as exc:
            log.warning("published ports stay on loopback: %s", exc)
            expose_all = False
        self.ports = PortPublisher(
            self.monitor.hmp, self._open_engine_channel, expose_all,
            reserved={("tcp", "127.0.0.1", ssh_port)}, on_change=self._on_port_forwards,
            on_new_container=mounts.BindHinter(mounts.read_fw_cfg(self.paths.runtime_dir / "shares")))
        self.ports.start()

    def _on_port_forwards(self, entries: list[dict]) -> None:
        self.status.port_forwards = entries
        self.publish()

    def _open_engine_channel(self):  # noqa: ANN202 - a paramiko Channel
        """A channel to the guest's engine socket; rides out an sshd restart (a few seconds)."""
        if self.ssh is None:
            raise MachineError("the VM is not running")
        deadline, delay = time.monotonic() + ENGINE_RECONNECT_GRACE_S, 0.1
        while True:
            try:
                return self.ssh.open_unix_channel("/var/run/docker.sock", timeout=10.0)
            except HostKeyMismatchError:
                raise
            except SSHError:
                # A live transport means the guest refused the socket (dockerd down): fail now.
                if self.ssh is None or self.ssh.is_active() or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _engine_version(self, loop: asyncio.AbstractEventLoop, deadline: float) -> dict:
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                code, _ = await loop.run_in_executor(None, lambda: engine.get(self._open_engine_channel(), "/_ping"))
                if code == 200:
                    code, body = await loop.run_in_executor(
                        None, lambda: engine.get(self._open_engine_channel(), "/version"))
                    return engine.version_of(body)
            except (PinnaceError, OSError, ValueError) as exc:
                last = exc
            await asyncio.sleep(0.3)
        raise MachineError("the engine did not answer /_ping in time", last)

    async def _wait_for_guest(self, offset: int) -> None:
        tail = bootlog.SerialTail(self.paths.serial_log, offset)
        timeout = READY_TIMEOUT_S.get(self.status.accel, READY_TIMEOUT_DEFAULT_S)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in tail.events():
                if event.kind == "failed":
                    raise MachineError(f"the guest failed to boot: {event.value} (see {self.paths.serial_log})")
                if event.kind == "ready":
                    return
                self.set_stage(bootlog.STAGE_LABELS.get(event.value, event.value))
            if not process.alive(self.status.qemu_pid):
                raise MachineError(self._exit_reason())
            await asyncio.sleep(0.1)
        raise MachineError(f"the engine was not ready after {timeout:.0f} s while "
                           f"'{self.status.stage}' (see {self.paths.serial_log})")

    # --- watching the machine --------------------------------------------------------------

    async def _watch_events(self, monitor: Monitor) -> None:
        with contextlib.suppress(Exception):
            async for name in monitor.events():
                log.info("QMP event %s", name)
                if name == "SHUTDOWN":
                    self.guest_shutdown = True

    async def _watch_process(self) -> None:
        pid = self.status.qemu_pid
        while process.alive(pid):
            if self.proc is not None and self.proc.poll() is not None:
                break
            await asyncio.sleep(0.25)
        if self.expect_exit or pid != self.status.qemu_pid:
            return
        reason = self._exit_reason()
        log.error("%s", reason)
        await self._fail(reason)
        if self.boot_task is not None and not self.boot_task.done():
            self.boot_task.cancel()
        self.finished.set()

    def _gone_reason(self) -> str | None:
        """Why QEMU is gone, or None while it runs (an adopted QEMU is not our child: pid check)."""
        if self.proc is not None:
            return self._exit_reason() if self.proc.poll() is not None else None
        return None if process.alive(self.status.qemu_pid) else self._exit_reason()

    def _exit_reason(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        if self.guest_shutdown:
            return "the guest powered off by itself"
        if code is not None and code < 0:
            what = f"killed by signal {-code}"
        elif code is not None:
            what = f"exit code {code}"
        else:
            what = f"pid {self.status.qemu_pid} is gone"
        tail = [ln for ln in bootlog.SerialTail(self.qemu_log, self.qemu_log_offset).read_lines() if ln.strip()]
        return f"QEMU exited unexpectedly ({what})" + (f": {tail[-1]}" if tail else "")

    # --- stopping --------------------------------------------------------------------------

    async def _teardown_links(self) -> None:
        loop = asyncio.get_running_loop()
        if self.ports is not None:
            await self.ports.stop()
            self.ports = None
        self.status.port_forwards = []
        if self.forwarder is not None:
            await loop.run_in_executor(None, self.forwarder.stop)
            self.forwarder = None
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None
        if self.monitor is not None:
            await self.monitor.close()
            self.monitor = None
        self.status.docker_socket = ""

    async def shutdown(self, reason: str) -> None:
        """Clean stop: system_powerdown, wait for the guest, then quit, then kill."""
        pid = self.status.qemu_pid
        if self.lifecycle.state in (State.STOPPED, State.ERROR) and not process.alive(pid):
            raise StateError(f"instance '{self.paths.instance}' is not running")
        self.expect_exit = True
        self.to(State.STOPPING, reason)
        self.set_stage("stopping")
        loop = asyncio.get_running_loop()
        if self.ports is not None:
            await self.ports.stop()
            self.ports = None
        if self.forwarder is not None:
            await loop.run_in_executor(None, self.forwarder.stop)
            self.forwarder = None
        if self.monitor is not None and process.alive(pid):
            with contextlib.suppress(PinnaceError):
                await self.monitor.powerdown()
        clean = await loop.run_in_executor(None, process.wait_exit, pid or 0, STOP_GRACE_S)
        if not clean and self.monitor is not None:
            log.warning("guest did not power off within %.0f s; sending quit", STOP_GRACE_S)
            await self.monitor.quit()
            clean = await loop.run_in_executor(None, process.wait_exit, pid or 0, 3.0)
        if not clean and pid:
            log.warning("QEMU did not quit; killing it")
            await loop.run_in_executor(None, process.terminate, pid)
        if self.proc is not None:
            self.proc.wait()
            self.proc = None
        await loop.run_in_executor(None, self._stop_virtiofsds)
        await self._teardown_links()
        for stale in (self.paths.qemu_pidfile, self.paths.qmp_socket):
            stale.unlink(missing_ok=True)
        self.status.qemu_pid = None
        self.status.stage = ""
        self.to(State.STOPPED, reason)

    async def _fail(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._teardown_links()
        pid = self.status.qemu_pid
        if process.alive(pid) and pid is not None:
            self.expect_exit = True
            await asyncio.get_running_loop().run_in_executor(None, process.terminate, pid)
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(None, self._stop_virtiofsds)
        self.status.qemu_pid = None
        if self.lifecycle.state is not State.ERROR:
            with contextlib.suppress(StateError):
                self.to(State.ERROR, reason)
        self.status.reason = reason
        self.publish()

    # --- main ------------------------------------------------------------------------------

    async def run(self) -> int:
        pid = process.read_pidfile(self.paths.qemu_pidfile)
        adopting = process.is_our_qemu(pid, self.paths.instance)
        # Clients may connect as soon as the socket exists: never let them see a stale "stopped".
        self.to(State.STARTING, "re-adopting the running VM" if adopting else "starting")
        server = await self.serve()
        try:
            if adopting:
                self.boot_task = asyncio.create_task(self.adopt(pid or 0))
            else:
                self.boot_task = asyncio.create_task(self.boot())
            with contextlib.suppress(PinnaceError, asyncio.CancelledError):
                await self.boot_task
            if self.lifecycle.state is State.ERROR and not self.ops.locked():
                self.finished.set()
            await self.finished.wait()
            async with self.ops:
                pass
        finally:
            for queue in list(self.watchers):
                queue.put_nowait(None)
            await asyncio.sleep(0.1)
            server.close()
            self.paths.control_socket.unlink(missing_ok=True)
            await self._teardown_links()
        return 0 if self.lifecycle.state is State.STOPPED else 1


def acquire_lock(path: Path):  # noqa: ANN201 - an open file holding the lock
    """One agent per instance: an exclusive lock held for the agent's lifetime."""
    handle = open(path, "a+")  # noqa: SIM115 - held open on purpose
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return None
    else:
        import fcntl

        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None
    return handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pinnace-agent")
    parser.add_argument("--name", default="default")
    args = parser.parse_args(argv)
    paths = Paths.for_instance(args.name)
    paths.ensure_dirs()
    logging.basicConfig(
        level=logging.INFO, filename=str(paths.agent_log),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    # Reconnect attempts while the guest boots make paramiko log whole tracebacks; ours say enough.
    logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)
    logging.getLogger("qemu").setLevel(logging.WARNING)
    lock = acquire_lock(paths.agent_lock)
    if lock is None:
        log.info("another agent holds %s; exiting", paths.agent_lock)
        return 0
    log.info("agent %d for instance %s", os.getpid(), paths.instance)
    code = 1
    try:
        code = asyncio.new_event_loop().run_until_complete(Agent(paths).run())
    except Exception:
        log.exception("agent crashed")
    finally:
        logging.shutdown()
        # Blocking helpers (an SSH connect waiting out its deadline) may still sit in executor
        # threads; the VM is already stopped or handed over, so do not wait for them.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
