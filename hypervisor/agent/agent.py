"""The Agent: serves control requests and runs the instance's lifecycle over the parts it is
handed — a QEMU driver (the VM process), an engine link (the way to dockerd and what rides on it)
and a status board (the one writer of the status). Parts raise; the agent decides the state.

    stopped -> starting -> running -> stopping -> stopped
    starting | running -> error (the failing step named); error -> starting | stopping | stopped

A failure is published first and cleaned up after, so no teardown can hide it; a failed
re-adoption leaves the running VM alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

from hypervisor import disk, process
from hypervisor import platform as host_platform
from hypervisor.agent.control_server import ControlServer, serve
from hypervisor.agent.engine_link import EngineLink
from hypervisor.agent.lifecycle import State
from hypervisor.agent.qemu_driver import Machine, QemuDriver, ready_timeout
from hypervisor.agent.status_board import StatusBoard
from hypervisor.control import Status
from hypervisor.errors import MachineError, PinnaceError, StateError
from hypervisor.paths import Paths
from hypervisor.platform import Platform

log = logging.getLogger("pinnace.agent")

# What a re-adopting agent takes from the previous agent's last status: facts of the running VM.
ADOPTED_FACTS = ("accel", "accel_reason", "accel_warning", "cpus", "memory_mib", "disk_gib", "started_at",
                 "shares", "share_transport_reason")


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
        self.control = ControlServer(self.board, self.operate)
        self.ops = asyncio.Lock()
        self.finished = asyncio.Event()
        self.boot_task: asyncio.Task[None] | None = None
        self._vm_tasks: set[asyncio.Task[Any]] = set()  # watchers of the current VM, ended with it
        self._stop_requested: asyncio.Task[None] | None = None

    # --- control operations ----------------------------------------------------------------

    async def operate(self, op: str) -> None:
        """stop | restart | reset, one at a time; a boot in progress is cancelled first."""
        if op not in ("stop", "restart", "reset"):
            raise StateError(f"unknown operation {op!r}")
        await self._cancel_boot()
        async with self.ops:
            reason = {"stop": "stopped by request", "restart": "restarting", "reset": "resetting"}[op]
            if self.board.state in (State.STOPPED, State.ERROR) and not self.driver.alive():
                # Nothing runs (a failed boot or restart): a stop just says so, the others boot.
                if self.board.state is State.ERROR:
                    self.board.to(State.STOPPED, reason)
            else:
                await self._shutdown(reason)
            if op == "reset":
                self._delete_instance_data()
            if op != "stop":
                await self.boot()
        if op == "stop":
            self.finished.set()

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

    async def boot(self) -> None:
        """-> starting -> running, or error with the failing step named (and QEMU ended)."""
        self.board.to(State.STARTING, "starting")
        self.board.update(engine_version="", started_at=time.time(), ready_at=None)
        try:
            machine = await self.driver.boot()
            await self._bring_up(machine, booting=True)
        except asyncio.CancelledError:
            raise
        except PinnaceError as exc:
            await self._fail(str(exc), kill=True)
            raise
        except Exception as exc:  # the agent must report, never die silently
            log.exception("boot failed")
            await self._fail(f"unexpected error: {exc}", kill=True)
            raise MachineError("start failed", exc) from exc

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
            await self._fail(f"cannot re-adopt the running VM (it was left running): {exc}", kill=False)
            raise

    async def _bring_up(self, machine: Machine, booting: bool) -> None:
        self._watch(self.driver.follow_events(), "qmp-events")
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
        self.board.update(ready_at=time.time())
        self.board.stage("ready")
        self.board.to(State.RUNNING, "engine ready")

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
        reason = await self.driver.wait_exit()
        if self.driver.expect_exit:
            return
        log.error("%s", reason)
        boot = self.boot_task
        await self._fail(reason, kill=False)
        if boot is not None and not boot.done():
            boot.cancel()
        self.finished.set()

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
        """SIGTERM, SIGHUP, SIGINT (a logout, a shutdown, Ctrl-C): the guest powers off cleanly
        instead of QEMU dying with the agent's session."""
        loop = asyncio.get_running_loop()

        def stop(name: str) -> None:
            log.info("%s: stopping the VM cleanly", name)
            if self._stop_requested is None:
                self._stop_requested = loop.create_task(self._stop_quietly(), name="signal-stop")

        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop, sig.name)
            except (NotImplementedError, RuntimeError, ValueError):  # no POSIX signals (Windows)
                return

    async def _stop_quietly(self) -> None:
        try:
            await self.operate("stop")
        except PinnaceError as exc:
            log.error("stop on signal: %s", exc)
            self.finished.set()

    async def run(self) -> int:
        pid = process.read_pidfile(self.paths.qemu_pidfile)
        adopting = process.is_our_qemu(pid, self.paths.instance)
        # Clients may connect as soon as the socket exists: never let them see a stale "stopped".
        self.board.to(State.STARTING, "re-adopting the running VM" if adopting else "starting")
        address = self.platform.control_endpoint(self.paths)
        server = await serve(self.control.handle, address)
        self._stop_on_signals()
        try:
            self.boot_task = asyncio.create_task(self.adopt(pid or 0) if adopting else self.boot(), name="boot")
            with contextlib.suppress(PinnaceError, asyncio.CancelledError):
                await self.boot_task
            if self.board.state is State.ERROR and not self.ops.locked():
                self.finished.set()
            await self.finished.wait()
            async with self.ops:
                pass
        finally:
            self.board.close()
            await asyncio.sleep(0.1)
            server.close()
            if not isinstance(address, str):
                address.unlink(missing_ok=True)
            self._stop_watching()
            await self.link.close()
        return 0 if self.board.state is State.STOPPED else 1
