"""The Agent: serves control requests and runs the instance's lifecycle over the parts it is
handed — a QEMU driver (the VM process), an engine link (the way to dockerd and what rides on it)
and a status board (the one writer of the status). Parts raise; the agent decides the state.

    stopped -> starting -> running -> stopping -> stopped
    running <-> paused (QEMU stopped the VM: a full host disk, resumed when there is room again)
    starting | running | paused -> error (the failing step named); error -> starting | stopping | stopped

A failure is published first and cleaned up after, so no teardown can hide it; a failed
re-adoption leaves the running VM alone; a VM that crashes while running is booted again (a few
times, with growing delays: recovery.RestartPolicy) unless the user stops it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hypervisor import bootlog, disk, process
from hypervisor import platform as host_platform
from hypervisor.agent import engine_setup, guest_image, image_health
from hypervisor.agent.clock_keeper import ClockKeeper
from hypervisor.agent.control_server import ControlServer, serve
from hypervisor.agent.engine_link import EngineLink
from hypervisor.agent.image_slots import BootPlan, ImageSlots
from hypervisor.agent.lifecycle import State
from hypervisor.agent.qemu_driver import Machine, QemuDriver, ready_timeout
from hypervisor.agent.recovery import RESUME_FREE_BYTES, RestartPolicy, is_out_of_space, pause_reason
from hypervisor.agent.status_board import StatusBoard
from hypervisor.control import Status
from hypervisor.errors import MachineError, PinnaceError, StateError
from hypervisor.paths import Paths
from hypervisor.platform import Platform

log = logging.getLogger("pinnace.agent")

RUNTIME_CHECK_S = 2.0  # how soon sockets removed under a running agent (a logout) come back
SPACE_CHECK_S = 1.0  # how often a VM paused on a full disk looks for room again

# What a re-adopting agent takes from the previous agent's last status: facts of the running VM.
ADOPTED_FACTS = ("accel", "accel_reason", "accel_warning", "cpus", "memory_mib", "disk_gib", "started_at",
                 "shares", "share_transport_reason", "image_version", "image_fingerprint", "image_role", "image_note",
                 "image_notice", "image_notice_id", "engine_proxy", "engine_ca", "engine_config_warning")


def read_last_status(paths: Paths) -> dict[str, Any]:
    """The previous agent's last status (before this one publishes its own over it)."""
    try:
        value = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class Agent:
    def __init__(self, paths: Paths, platform: Platform | None = None,
                 driver: QemuDriver | None = None, link: EngineLink | None = None,
                 board: StatusBoard | None = None) -> None:
        self.paths = paths
        self.platform = platform or host_platform.current()
        self.previous_status = read_last_status(paths)
        self.board = board or StatusBoard(Status(instance=paths.instance, agent_pid=os.getpid()), paths.state_file)
        self.driver = driver or QemuDriver(paths, self.board, self.platform)
        self.link = link or EngineLink(paths, self.board, self.platform)
        self.slots = ImageSlots(paths, platform=self.platform)
        self.control = ControlServer(self.board, self.operate)
        self.clock = ClockKeeper(self.link.open_guest_command, self.board,
                                 paused=lambda: self.board.state is State.PAUSED)
        self._pause_requested = False
        self.ops = asyncio.Lock()
        self.finished = asyncio.Event()
        self.stopped = threading.Event()  # set as the agent ends: a host waiting on it may go on
        self.boot_task: asyncio.Task[None] | None = None
        self._vm_tasks: set[asyncio.Task[Any]] = set()  # watchers of the current VM, ended with it
        self._stop_requested: asyncio.Task[None] | None = None
        self.restarts = RestartPolicy()
        self._io_error: dict[str, Any] | None = None  # QEMU's last BLOCK_IO_ERROR before a pause
        self._space_watch: asyncio.Task[None] | None = None
        # while a candidate image boots: set with QEMU's exit reason, for _boot_candidate
        self._candidate_exit: tuple[asyncio.Event, list[str]] | None = None
        self._servers: list[asyncio.AbstractServer] = []

    # --- control operations ----------------------------------------------------------------

    async def operate(self, op: str) -> None:
        """stop | restart | reset | resume, one at a time; a boot in progress (or a restart after
        a crash waiting for its turn) is cancelled first."""
        if op not in ("stop", "restart", "reset", "pause", "resume"):
            raise StateError(f"unknown operation {op!r}")
        if op in ("pause", "resume"):
            await (self._pause() if op == "pause" else self._resume())
            return
        await self._cancel_boot()
        async with self.ops:
            reason = {"stop": "stopped by request", "restart": "restarting", "reset": "resetting"}[op]
            if self.board.state in (State.STOPPED, State.ERROR) and not self.driver.alive():
                # Nothing runs (a failed boot or restart): a stop just says so, the others boot.
                if self.board.state is State.ERROR:
                    self.board.to(State.STOPPED, reason)
                await self._end_orphan()
            else:
                await self._shutdown(reason)
            if op == "reset":
                self._delete_instance_data()
            if op != "stop":
                await self.boot()
        if op == "stop":
            self.finished.set()

    async def _pause(self) -> None:
        """The user's pause (QMP stop): the VM keeps its memory and uses no CPU; `start` resumes."""
        if self.board.state is State.PAUSED:
            return
        if self.board.state is not State.RUNNING:
            raise StateError(f"the VM is {self.board.state.value}: only a running VM can be paused")
        self._pause_requested = True
        await self.driver.pause()
        for _ in range(20):  # QEMU's STOP event
            if self.board.state is State.PAUSED:
                return
            await asyncio.sleep(0.1)

    async def _resume(self) -> None:
        """A paused VM runs again (the user's start); it pauses again at once if its disk is
        still full, and the status says so."""
        if self.board.state is not State.PAUSED:
            return
        await self.driver.resume()
        for _ in range(20):  # QEMU's RESUME event, or a new STOP when the disk is still full
            await asyncio.sleep(0.1)
            if self.board.state is not State.PAUSED:
                return

    def _orphan_runs(self) -> bool:
        return not self.driver.alive() and process.is_our_qemu(process.read_pidfile(self.paths.qemu_pidfile),
                                                                self.paths.instance)

    async def _end_orphan(self) -> None:
        """A QEMU of this instance that no agent controls (its monitor could not be reached):
        a stop or a boot must not leave it running on the data disk. QEMU quits on SIGTERM."""
        pid = process.read_pidfile(self.paths.qemu_pidfile)
        if not process.is_our_qemu(pid, self.paths.instance):
            return
        log.warning("ending QEMU pid %s, which runs without an agent", pid)
        self.board.stage("ending the VM that ran without its agent")
        await asyncio.get_running_loop().run_in_executor(None, self.platform.terminate, pid or 0, 10.0)
        self.board.stage("")

    def _delete_instance_data(self) -> None:
        """What reset deletes, and only once no QEMU of this instance can be using it."""
        pid = process.read_pidfile(self.paths.qemu_pidfile)
        if self.driver.alive() or process.is_our_qemu(pid, self.paths.instance):
            raise MachineError("the VM is still running: the data disk was not deleted")
        self.board.stage("deleting the data disk and keys")
        disk.delete_instance_data(self.paths.data_disk, self.paths.keys_dir)

    async def _cancel_boot(self) -> None:
        task = self.boot_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PinnaceError):
                await task

    # --- bringing the VM up ----------------------------------------------------------------

    async def boot(self, reason: str = "starting") -> None:
        """-> starting -> running, or error with the failing step named (and QEMU ended).

        A new guest image (image_slots) must also pass a health check; if it fails, the VM is
        ended and the known-good image boots instead, and the status says why."""
        self._io_error = None
        self.board.to(State.STARTING, reason)
        self.board.update(engine_version="", started_at=time.time(), ready_at=None, clock_offset_s=None,
                          clock_warning="")
        loop = asyncio.get_running_loop()
        try:
            self.driver.preflight()
            plan = await loop.run_in_executor(None, self.slots.plan, self.driver.locate_image)
            self._show_image(plan)
            if plan.fallback is None:
                machine = await self.driver.boot(plan.image)
                await self._bring_up(machine, booting=True)
            else:
                try:
                    await self._boot_candidate(plan)
                except PinnaceError as exc:
                    await self._roll_back(plan, exc)
                    return
            if plan.candidate:
                await loop.run_in_executor(None, self.slots.commit, plan)
                self._show_image(BootPlan(plan.image, plan.fingerprint, False))
        except asyncio.CancelledError:
            raise
        except PinnaceError as exc:
            await self._fail(str(exc), kill=True)
            raise
        except Exception as exc:  # the agent must report, never die silently
            log.exception("boot failed")
            await self._fail(f"unexpected error: {exc}", kill=True)
            raise MachineError("start failed", exc) from exc

    async def _boot_candidate(self, plan: BootPlan) -> None:
        """Boot and judge a candidate image; its QEMU exiting meanwhile (a kernel panic) ends the
        attempt at once, as a failure for the rollback to name, not as the instance's error."""
        exited = asyncio.Event()
        self._candidate_exit = (exited, [])

        async def up() -> None:
            machine = await self.driver.boot(plan.image)
            await self._bring_up(machine, booting=True, judge=True)

        work = asyncio.ensure_future(up())
        died = asyncio.ensure_future(exited.wait())
        try:
            await asyncio.wait({work, died}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, PinnaceError):
                    await work
                raise MachineError(self._candidate_exit[1][0] if self._candidate_exit[1] else "QEMU exited")
            work.result()
        except BaseException:
            work.cancel()
            raise
        finally:
            died.cancel()
            self._candidate_exit = None

    async def _roll_back(self, plan: BootPlan, failure: PinnaceError) -> None:
        """The candidate failed to boot or to pass its health check: end that VM, remember why
        (with the console's last lines), and boot the known-good image on the same data disk."""
        assert plan.fallback is not None
        loop = asyncio.get_running_loop()
        console = bootlog.last_lines(self.paths.serial_log, 200, window=64 << 10)
        panic = bootlog.kernel_panic(console)
        reason = f"{failure} ({panic})" if panic else str(failure)
        notice = await loop.run_in_executor(None, self.slots.reject, plan, reason, console[-5:])
        log.error("%s", notice)
        await self._abandon()
        self.board.to(State.STARTING, f"rolling back: {notice}")
        fallback = BootPlan(plan.fallback, plan.fallback_fingerprint, False)
        self._show_image(fallback)
        try:
            await loop.run_in_executor(None, guest_image.verify, plan.fallback)
            machine = await self.driver.boot(plan.fallback)
            await self._bring_up(machine, booting=True, judge=False)
        except PinnaceError as second:
            # Neither image came up: the cause is elsewhere (host, QEMU, disk), not the candidate.
            await loop.run_in_executor(None, self.slots.forgive, plan)
            raise MachineError(f"{failure}; the previous image {fallback.name} failed as well: {second}") from second

    async def _abandon(self) -> None:
        """End the VM of a failed candidate without publishing an error: a fallback follows."""
        self.driver.expect_exit = True
        self._stop_watching()
        await self.link.close()
        try:
            await self.driver.kill()
        except Exception:  # noqa: BLE001 - logged; the fallback's boot reports what matters
            log.exception("ending the failed candidate's VM")

    def _show_image(self, plan: BootPlan) -> None:
        record = self.slots.load()
        self.board.update(image_version=plan.image.manifest.version, image_fingerprint=plan.fingerprint,
                          image_role="candidate" if plan.candidate else "known good",
                          image_note=plan.note, image_notice=record.notice, image_notice_id=record.notice_id)

    async def adopt(self, pid: int) -> None:
        """A QEMU of ours outlived its agent: take it over instead of booting a second VM."""
        self.board.update(**{k: self.previous_status[k] for k in ADOPTED_FACTS if k in self.previous_status})
        self.board.to(State.STARTING, "re-adopting the running VM")
        try:
            machine = await self.driver.adopt(pid)
            await self._bring_up(machine, booting=False)
        except asyncio.CancelledError:
            raise
        except PinnaceError as exc:
            await self._fail(f"the VM of this instance (QEMU pid {pid}) runs but cannot be re-adopted: {exc}; "
                             "`pinnace stop` ends it", kill=False)
            raise

    async def _bring_up(self, machine: Machine, booting: bool, judge: bool = False) -> None:
        self._watch(self.driver.follow_events(self._on_vm_event), "qmp-events")
        self._watch(self._watch_qemu(), "qemu-exit")
        if booting:
            self._watch(self.driver.watch_virtiofsds(), "virtiofsd")
        deadline = time.monotonic() + ready_timeout(machine.accel)
        # sshd starts well before the engine: connect while the guest boots, not after.
        reach = asyncio.ensure_future(self.link.reach(machine, deadline))
        try:
            if booting:
                await self.driver.wait_for_guest(deadline)
            self.board.stage("connecting to the engine")
            await reach
        except BaseException:
            reach.cancel()
            reach.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        await self.link.attach(self.driver.hmp, machine.ssh_port, deadline)
        if judge:
            self.board.stage("checking the new guest image")
            await image_health.check(self.link.open_engine_channel, self.link.ssh, deadline)
        self._engine_settled()
        self.board.update(ready_at=time.time())
        self.board.stage("ready")
        self.board.to(State.RUNNING, "engine ready")
        self._watch(self.clock.follow(), "clock")
        self._watch(self.link.keep_alive(), "ssh-keepalive")

    def _engine_settled(self) -> None:
        """The engine answers: show its proxy, CAs and configuration warning; keep the user's
        configuration as last good unless the guest fell back from it."""
        setup = self.driver.engine_setup
        if setup is None:  # an adopted VM: the previous agent's facts stand
            return
        refused = engine_setup.refusal(bootlog.last_lines(self.paths.serial_log, 400, window=256 << 10))
        warning = setup.warning
        if refused:
            warning = (f"dockerd refused engine.json ({refused}): the engine runs with its last good "
                       f"configuration; fix it with `pinnace config engine`")
            log.error("%s", warning)
        else:
            engine_setup.remember_good(self.paths, self.platform, setup.user)
        self.board.update(engine_proxy=setup.proxy.describe(), engine_ca=setup.ca.describe(),
                          engine_config_warning=warning)

    def _watch(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._vm_tasks.add(task)
        task.add_done_callback(self._vm_tasks.discard)

    def _stop_watching(self) -> None:
        current = asyncio.current_task()
        for task in list(self._vm_tasks):
            if task is not current:
                task.cancel()

    async def _watch_qemu(self) -> None:
        """QEMU's death is published at once; a VM that was up is then booted again after a delay
        (the restart is the boot task, so a user's stop or start meanwhile cancels or waits it)."""
        reason = await self.driver.wait_exit()
        if self.driver.expect_exit:
            return
        if self._candidate_exit is not None and self.board.state is State.STARTING:
            self._candidate_exit[1].append(reason)  # the candidate's boot reports and rolls back
            self._candidate_exit[0].set()
            return
        log.error("%s", reason)
        was_up = self.board.state in (State.RUNNING, State.PAUSED)
        delay = self.restarts.next_delay(time.monotonic()) if was_up and not self.driver.guest_shutdown else None
        if was_up and delay is None and not self.driver.guest_shutdown:
            reason = self.restarts.give_up_reason(reason)
        elif delay is not None:
            reason = self.restarts.restarting_reason(reason, delay)
        boot = self.boot_task
        await self._fail(reason, kill=False)
        if boot is not None and not boot.done() and boot is not asyncio.current_task():
            boot.cancel()
        if delay is None:
            self.finished.set()
            return
        self.boot_task = asyncio.get_running_loop().create_task(self._restart_after_crash(delay), name="restart")

    async def _restart_after_crash(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self.ops:
            if self.board.state is not State.ERROR or self.driver.alive():
                return  # the user acted meanwhile
            await self._end_orphan()
            attempt = f"restarting after a crash ({self.restarts.attempt} of {self.restarts.limit})"
            try:
                await self.boot(reason=attempt)
            except PinnaceError as exc:
                log.error("restart after a crash failed: %s", exc)
                self.finished.set()

    # --- pauses: QEMU stopped the VM (a full host disk) -----------------------------------

    def _on_vm_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "BLOCK_IO_ERROR":
            self._io_error = data
        elif name == "STOP":
            self._paused()
        elif name == "RESUME":
            self._resumed()

    def _free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.paths.data_disk.parent).free
        except OSError:
            return None

    def _paused(self) -> None:
        reason = pause_reason(self._io_error, self.paths.data_disk, self._free_bytes())
        if self._pause_requested and not self._io_error:
            reason = "paused by request (`pinnace start` resumes it)"
        full = is_out_of_space(self._io_error)
        if self.board.state is State.STARTING:
            self.board.stage(f"paused: {reason}")  # a boot that waits on it names why
        if self.board.state not in (State.RUNNING, State.PAUSED):
            return
        log.warning("VM paused: %s", reason)
        self.link.set_paused(reason, drop_connections=full)
        self.board.to(State.PAUSED, reason)
        if full and (self._space_watch is None or self._space_watch.done()):
            self._space_watch = asyncio.get_running_loop().create_task(self._resume_when_space(), name="space")
            self._vm_tasks.add(self._space_watch)
            self._space_watch.add_done_callback(self._vm_tasks.discard)

    def _resumed(self) -> None:
        self._io_error = None
        self._pause_requested = False
        self.link.set_paused(None)
        if self.board.state is State.PAUSED:
            log.info("VM resumed")
            self.board.to(State.RUNNING, "resumed")
            # its clock stood still while it was stopped: the host's time, now
            self._watch(self.clock.sync("the VM resumed"), "clock-sync")

    async def _resume_when_space(self) -> None:
        """Resume a VM paused on a full disk once its filesystem has room again."""
        while self.board.state is State.PAUSED and is_out_of_space(self._io_error):
            free = self._free_bytes()
            if free is not None and free >= RESUME_FREE_BYTES:
                log.info("%d MiB free on the data disk's filesystem: resuming the VM", free >> 20)
                try:
                    await self.driver.resume()
                except PinnaceError as exc:
                    log.warning("resuming: %s", exc)
                await asyncio.sleep(2 * SPACE_CHECK_S)  # its RESUME, or a new pause if it fills again
                continue
            reason = pause_reason(self._io_error, self.paths.data_disk, free)
            if reason != self.board.get("reason"):
                self.link.set_paused(reason)
                self.board.to(State.PAUSED, reason)
            await asyncio.sleep(SPACE_CHECK_S)

    # --- taking it down --------------------------------------------------------------------

    async def _shutdown(self, reason: str) -> None:
        """Clean stop: the links first, then QEMU (powerdown -> quit -> terminate)."""
        self.driver.expect_exit = True
        self._stop_watching()
        self.board.to(State.STOPPING, reason)
        self.board.stage("stopping")
        await self.link.close()
        await self.driver.stop()
        self.board.update(stage="")
        self.board.to(State.STOPPED, reason)

    async def _fail(self, reason: str, kill: bool) -> None:
        """Publish the failure, then tear down: end QEMU (`kill`), or let go of a live one."""
        self.driver.expect_exit = True
        self.board.try_to(State.ERROR, reason)
        self._stop_watching()
        await self.link.close()
        try:
            if kill:
                await self.driver.kill()
            elif self.driver.alive():
                await self.driver.detach()
            else:
                await self.driver.release()
        except Exception:  # noqa: BLE001 - the failure is already reported; log what the cleanup hit
            log.exception("cleaning up after: %s", reason)

    # --- main ------------------------------------------------------------------------------

    def _stop_on_signals(self) -> None:
        """SIGTERM, SIGHUP, SIGINT (a logout, a shutdown, Ctrl-C; on Windows the console's close,
        logoff and shutdown events): the guest powers off cleanly instead of QEMU dying with the
        agent's session."""
        loop = asyncio.get_running_loop()

        def stop(name: str) -> None:
            log.info("%s: stopping the VM cleanly", name)
            if self._stop_requested is None:
                self._stop_requested = loop.create_task(self._stop_quietly(), name="signal-stop")

        if not self.platform.on_session_end(loop, stop, self.stopped):
            log.warning("the end of the session cannot be followed here: a logout may leave the VM running")

    async def _stop_quietly(self) -> None:
        try:
            await self.operate("stop")
        except PinnaceError as exc:
            log.error("stop on signal: %s", exc)
            self.finished.set()

    async def _keep_runtime_dir(self, address: Path | str) -> None:
        """A logout (or a cleaner) may delete the runtime dir under a running agent: its sockets
        come back within RUNTIME_CHECK_S, so `docker` and `pinnace status` keep finding the VM."""
        if not isinstance(address, Path):
            return  # a named pipe cannot be deleted from under us
        while True:
            await asyncio.sleep(RUNTIME_CHECK_S)
            try:
                if not address.exists():
                    log.warning("%s was removed under the running agent: serving it again", address)
                    self.paths.ensure_dirs()
                    self._servers.append(await serve(self.control.handle, address))
                    self.board.publish()
                await self.link.keep_endpoint()
            except (PinnaceError, OSError) as exc:
                log.error("cannot restore the agent's sockets: %s", exc)

    async def run(self) -> int:
        pid = process.read_pidfile(self.paths.qemu_pidfile)
        adopting = process.is_our_qemu(pid, self.paths.instance)
        # Clients may connect as soon as the socket exists: never let them see a stale "stopped".
        self.board.to(State.STARTING, "re-adopting the running VM" if adopting else "starting")
        address = self.platform.control_endpoint(self.paths)
        self._servers.append(await serve(self.control.handle, address))
        self._stop_on_signals()
        keeper = asyncio.get_running_loop().create_task(self._keep_runtime_dir(address), name="runtime-dir")
        try:
            self.boot_task = asyncio.create_task(self.adopt(pid or 0) if adopting else self.boot(), name="boot")
            with contextlib.suppress(PinnaceError, asyncio.CancelledError):
                await self.boot_task
            # An orphan (a QEMU this agent could not adopt) keeps its agent: `status` reports it
            # and `stop` ends it, instead of each command starting another failed adoption.
            if self.board.state is State.ERROR and not self.ops.locked() and not self._orphan_runs():
                self.finished.set()
            await self.finished.wait()
            async with self.ops:
                pass
        finally:
            self.stopped.set()
            keeper.cancel()
            self.board.close()
            await self.control.finish_answers()
            for server in self._servers:
                server.close()
            if not isinstance(address, str):
                address.unlink(missing_ok=True)
            self._stop_watching()
            await self.link.close()
        return 0 if self.board.state is State.STOPPED else 1
