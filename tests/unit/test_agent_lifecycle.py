"""The agent's lifecycle against a fake QEMU driver and a fake engine link: each scenario asserts
the exact sequence of states a watcher of the status board receives (as qemu.qmp's tests assert
runstates), and what was done to the VM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hypervisor.agent.agent import Agent
from hypervisor.agent.guest_image import GuestImage, ImageError
from hypervisor.agent.qemu_driver import Machine
from hypervisor.agent.recovery import RestartPolicy
from hypervisor.agent.status_board import StatusBoard
from hypervisor.control import Status
from hypervisor.errors import MachineError, PinnaceError, SSHError, StateError
from hypervisor.hostinfo import guest_arch
from hypervisor.paths import Paths
from tests import image_variants
from vmimage import manifest as image_manifest

pytestmark = pytest.mark.timeout(30)

MACHINE = Machine(pid=4242, ssh_port=2222, host_public="ssh-ed25519 AAAA", client_key=Path("/k"), accel="tcg")


class FakeDriver:
    """Records what the agent asked of the VM; `exited` ends a running QEMU from the test."""

    engine_setup = None

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.running = False
        self.expect_exit = False
        self.exited = asyncio.Event()
        self.exit_reason_text = "QEMU exited unexpectedly (killed by signal 9)"
        self.boot_error: PinnaceError | None = None
        self.adopt_error: PinnaceError | None = None
        self.dies_while_booting = False
        self.guest_shutdown = False
        self.on_event = None  # the agent's QMP event handler, to play events from a test
        self.image_dir: Path | None = None  # the "installed" image (make_image)
        self.booted: list[str] = []  # the image version of each boot
        self.broken_versions: set[str] = set()
        self.preflight_error: PinnaceError | None = None

    def preflight(self) -> None:
        if self.preflight_error:
            raise self.preflight_error

    def locate_image(self) -> GuestImage:
        if self.image_dir is None:
            raise ImageError("no guest image in this test")
        return GuestImage(self.image_dir, image_manifest.load(self.image_dir))

    async def boot(self, image: GuestImage | None = None) -> Machine:
        self.calls.append("boot")
        self.booted.append(image.manifest.version if image is not None else "")
        self.expect_exit = False
        self.exited = asyncio.Event()
        if self.boot_error:
            raise self.boot_error
        if image is not None and image.manifest.version in self.broken_versions:
            raise MachineError(f"the guest failed to boot: version {image.manifest.version} is broken")
        self.running = True
        return MACHINE

    async def adopt(self, pid: int) -> Machine:
        self.calls.append(f"adopt {pid}")
        self.expect_exit = False
        self.running = True
        if self.adopt_error:
            raise self.adopt_error
        return MACHINE

    async def wait_for_guest(self, deadline: float) -> None:
        if self.dies_while_booting:
            self.die()
            await asyncio.sleep(3600)  # the exit watcher cancels the boot

    async def follow_events(self, on_event=None) -> None:  # noqa: ANN001
        self.on_event = on_event
        await asyncio.sleep(3600)

    async def resume(self) -> None:
        self.calls.append("resume")
        if self.on_event is not None:
            self.on_event("RESUME", {})

    async def watch_virtiofsds(self) -> None:
        await asyncio.sleep(3600)

    async def wait_exit(self) -> str:
        await self.exited.wait()
        return self.exit_reason_text

    def die(self) -> None:
        self.running = False
        self.exited.set()

    def alive(self) -> bool:
        return self.running

    async def hmp(self, command_line: str) -> str:
        return ""

    async def stop(self) -> None:
        self.calls.append("stop")
        self.expect_exit = True
        self.die()

    async def kill(self) -> None:
        self.calls.append("kill")
        self.expect_exit = True
        self.die()

    async def detach(self) -> None:
        self.calls.append("detach")

    async def release(self) -> None:
        self.calls.append("release")


class FakeLink:
    ssh = None

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.attach_error: PinnaceError | None = None

    async def reach(self, machine: Machine, deadline: float) -> None:
        self.calls.append("reach")

    async def attach(self, hmp, ssh_port: int, deadline: float) -> None:  # noqa: ANN001
        self.calls.append("attach")
        if self.attach_error:
            raise self.attach_error

    async def close(self) -> None:
        self.calls.append("close")

    def set_paused(self, reason, drop_connections: bool = False) -> None:  # noqa: ANN001
        self.calls.append(f"paused {bool(reason)} drop={drop_connections}")

    async def keep_endpoint(self) -> None:
        pass

    async def keep_alive(self) -> None:
        await asyncio.sleep(3600)

    def open_guest_command(self, command: str):  # noqa: ANN201 - the clock keeper's way in
        raise SSHError("no guest in this test")

    def open_engine_channel(self):  # noqa: ANN201 - the image health check's way in
        raise SSHError("no engine in this test")


def make_image(directory: Path, version: str, arch: str) -> Path:
    return image_variants.tiny(directory, version, arch)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.paths = Paths.for_instance("lc", {"PINNACE_HOME": str(tmp_path)})
        self.paths.ensure_dirs()
        self.board = StatusBoard(Status(instance="lc"), self.paths.state_file)
        self.driver = FakeDriver()
        self.driver.image_dir = make_image(tmp_path / "installed", "1.0", guest_arch())
        self.link = FakeLink()
        self.agent = Agent(self.paths, driver=self.driver, link=self.link, board=self.board)  # type: ignore[arg-type]
        self.queue = self.board.watch()

    def states(self) -> list[str]:
        """The states the watcher received so far, each change once (stages and facts between)."""
        seen: list[str] = []
        while not self.queue.empty():
            status = self.queue.get_nowait()
            if status is not None and (not seen or seen[-1] != status.state):
                seen.append(status.state)
        return seen


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def run(coro):  # noqa: ANN001, ANN201
    """asyncio.run: the watchers of a VM a scenario leaves running are cancelled at its end."""
    return asyncio.run(coro)


def test_boot_then_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        assert h.board.status.engine_version == "" and h.board.status.ready_at
        await h.agent.operate("stop")
        assert h.states() == ["stopped", "starting", "running", "stopping", "stopped"]
        assert h.driver.calls == ["boot", "stop"]
        assert h.link.calls == ["reach", "attach", "close"]
        assert h.agent.finished.is_set()
        assert h.board.status.stage == ""

    run(scenario())


def test_restart_boots_again_without_an_error_from_the_old_qemu(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        await h.agent.operate("restart")
        await settle()  # the old QEMU's exit watcher must not report its (expected) exit
        assert h.states() == ["stopped", "starting", "running", "stopping", "stopped", "starting", "running"]
        assert h.driver.calls == ["boot", "stop", "boot"]
        assert not h.agent.finished.is_set()

    run(scenario())


def test_reset_deletes_the_disk_and_keys_only_after_the_vm_stopped(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        h.paths.data_disk.parent.mkdir(parents=True, exist_ok=True)
        h.paths.data_disk.write_bytes(b"disk")
        h.paths.keys_dir.mkdir(parents=True, exist_ok=True)
        real_stop = h.driver.stop

        async def stop_checking() -> None:
            assert h.paths.data_disk.exists(), "deleted while the VM ran"
            await real_stop()

        h.driver.stop = stop_checking  # type: ignore[method-assign]
        await h.agent.operate("reset")
        assert not h.paths.data_disk.exists() and not h.paths.keys_dir.exists()
        assert h.states() == ["stopped", "starting", "running", "stopping", "stopped", "starting", "running"]

    run(scenario())


def test_reset_refuses_to_delete_while_qemu_still_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        h.paths.data_disk.parent.mkdir(parents=True, exist_ok=True)
        h.paths.data_disk.write_bytes(b"disk")

        async def stop_that_fails_to_end_qemu() -> None:
            h.driver.calls.append("stop")

        h.driver.stop = stop_that_fails_to_end_qemu  # type: ignore[method-assign]
        with pytest.raises(MachineError, match="still running"):
            await h.agent.operate("reset")
        assert h.paths.data_disk.read_bytes() == b"disk"

    run(scenario())


def test_stop_when_nothing_runs_just_ends_the_agent(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.operate("stop")
        assert h.states() == ["stopped"]
        assert h.driver.calls == [] and h.agent.finished.is_set()

    run(scenario())


def test_after_a_failed_restart_stop_and_restart_still_work(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        h.driver.boot_error = MachineError("the guest failed to boot: engine")
        with pytest.raises(MachineError):
            await h.agent.operate("restart")
        h.driver.boot_error = None
        await h.agent.operate("restart")  # from error, with no QEMU: boots
        h.driver.boot_error = MachineError("the guest failed to boot: engine")
        with pytest.raises(MachineError):
            await h.agent.operate("restart")
        await h.agent.operate("stop")  # from error, with no QEMU: stopped
        assert h.states() == ["stopped", "starting", "running", "stopping", "stopped", "starting", "error",
                              "stopped", "starting", "running", "stopping", "stopped", "starting", "error",
                              "stopped"]
        assert h.driver.calls == ["boot", "stop", "boot", "kill", "boot", "stop", "boot", "kill"]
        assert h.agent.finished.is_set()

    run(scenario())


def test_adopt_takes_the_previous_facts(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.agent.previous_status = {"accel": "kvm", "shares": [{"path": "/h"}], "state": "running"}
        await h.agent.adopt(4242)
        assert h.states() == ["stopped", "starting", "running"]
        assert h.driver.calls == ["adopt 4242"]
        assert h.board.status.accel == "kvm" and h.board.status.shares == [{"path": "/h"}]

    run(scenario())


def test_failed_adoption_never_kills_a_healthy_vm(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.link.attach_error = SSHError("guest sshd did not answer in time")
        with pytest.raises(SSHError):
            await h.agent.adopt(4242)
        assert h.states() == ["stopped", "starting", "error"]
        assert h.driver.calls == ["adopt 4242", "detach"]
        assert h.driver.running  # untouched
        assert "runs but cannot be re-adopted" in h.board.status.reason and "sshd" in h.board.status.reason
        assert "`pinnace stop` ends it" in h.board.status.reason

    run(scenario())


def test_boot_failure_ends_qemu_and_names_the_step(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.link.attach_error = MachineError("the engine did not answer /_ping in time")
        with pytest.raises(MachineError):
            await h.agent.boot()
        assert h.states() == ["stopped", "starting", "error"]
        assert h.driver.calls == ["boot", "kill"]
        assert h.board.status.reason == "the engine did not answer /_ping in time"

    run(scenario())


def test_qemu_dying_during_boot_is_reported_with_its_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.driver.dies_while_booting = True
        h.agent.boot_task = asyncio.create_task(h.agent.boot())
        with pytest.raises(asyncio.CancelledError):
            await h.agent.boot_task
        assert h.states() == ["stopped", "starting", "error"]
        assert h.board.status.reason == h.driver.exit_reason_text
        assert h.driver.calls == ["boot", "release"]
        assert h.agent.finished.is_set()

    run(scenario())


def test_qemu_dying_while_running_is_reported_before_any_teardown(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.agent.restarts = RestartPolicy(delays_s=(0.05,))
        await h.agent.boot()
        seen_at_close: list[str] = []

        async def slow_close() -> None:  # a teardown that hangs must not delay the report
            seen_at_close.append(h.board.status.state)
            await asyncio.sleep(0.2)

        h.link.close = slow_close  # type: ignore[method-assign]
        h.driver.die()
        await wait_state(h, "error")
        assert h.board.status.reason == f"{h.driver.exit_reason_text}; restarting in 0 s (1 of 3)"
        await wait_state(h, "running")
        assert seen_at_close[0] == "error"
        assert h.states() == ["stopped", "starting", "running", "error", "starting", "running"]
        assert h.board.status.reason == "engine ready"
        assert h.driver.calls == ["boot", "release", "boot"]
        assert not h.agent.finished.is_set()

    run(scenario())


async def wait_state(h: Harness, state: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while h.board.state.value != state:
        assert asyncio.get_running_loop().time() < deadline, f"still {h.board.state.value}, not {state}"
        await asyncio.sleep(0.01)


def test_a_crash_loop_is_not_restarted_for_ever(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.agent.restarts = RestartPolicy(limit=1, delays_s=(0.01,))
        await h.agent.boot()
        h.driver.die()
        await wait_state(h, "error")
        await wait_state(h, "running")
        h.driver.die()
        await asyncio.wait_for(h.agent.finished.wait(), 5)
        assert h.board.state.value == "error"
        assert "not restarted again: it crashed 2 times in 5 minutes" in h.board.status.reason
        assert h.driver.calls.count("boot") == 2

    run(scenario())


def test_a_stop_during_the_restart_delay_wins(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.agent.restarts = RestartPolicy(delays_s=(30.0,))
        await h.agent.boot()
        h.driver.die()
        await wait_state(h, "error")
        await asyncio.wait_for(h.agent.operate("stop"), 5)
        assert h.board.state.value == "stopped"
        assert h.driver.calls.count("boot") == 1

    run(scenario())


def test_a_guest_that_powered_off_is_not_restarted(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.agent.restarts = RestartPolicy(delays_s=(0.01,))
        await h.agent.boot()
        h.driver.guest_shutdown = True
        h.driver.die()
        await asyncio.wait_for(h.agent.finished.wait(), 5)
        assert h.board.state.value == "error"
        assert h.driver.calls.count("boot") == 1

    run(scenario())


def test_a_full_disk_pauses_then_resumes_when_there_is_room(tmp_path: Path) -> None:
    """QEMU's BLOCK_IO_ERROR (nospace) + STOP: paused with the reason, engine clients refused and
    the ones in flight dropped; the real free space of tmp_path is ample, so the agent resumes."""
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        await settle()
        h.driver.on_event("BLOCK_IO_ERROR", {"device": "", "node-name": "data", "operation": "write",
                                             "action": "stop", "nospace": True, "reason": "No space left on device"})
        h.driver.on_event("STOP", {})
        assert h.board.state.value == "paused"
        assert f"the disk holding {h.paths.data_disk} is full" in h.board.status.reason
        assert "paused True drop=True" in h.link.calls
        await wait_state(h, "running")
        assert h.board.status.reason == "resumed"
        assert "resume" in h.driver.calls
        assert h.link.calls[-1] == "paused False drop=False"
        assert h.states() == ["stopped", "starting", "running", "paused", "running"]

    run(scenario())


def test_a_plain_pause_waits_for_the_users_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        await settle()
        h.driver.on_event("STOP", {})
        assert h.board.state.value == "paused"
        assert "paused True drop=False" in h.link.calls
        await asyncio.sleep(0.2)
        assert "resume" not in h.driver.calls  # not a full disk: nothing resumes it behind the user's back
        await h.agent.operate("resume")
        assert h.board.state.value == "running"

    run(scenario())


def test_error_then_start_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.driver.boot_error = MachineError("no guest image for x86_64")
        with pytest.raises(MachineError):
            await h.agent.boot()
        h.driver.boot_error = None
        await h.agent.boot()
        assert h.states() == ["stopped", "starting", "error", "starting", "running"]

    run(scenario())


def test_state_json_mirrors_the_board(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        import json

        saved = json.loads(h.paths.state_file.read_text())
        assert saved["state"] == "running" and saved["stage"] == "ready"
        assert (h.paths.state_file.stat().st_mode & 0o777) == 0o600

    run(scenario())


def test_the_board_refuses_illegal_moves_and_unknown_facts(tmp_path: Path) -> None:
    from hypervisor.agent.lifecycle import State

    board = StatusBoard(Status(instance="x"), tmp_path / "state.json")
    with pytest.raises(StateError):
        board.to(State.RUNNING)
    with pytest.raises(ValueError, match="not a status fact"):
        board.update(state="running")
    assert not board.try_to(State.STOPPING, "why")
    assert board.status.state == "stopped"


# --- new guest images: boot, judge, commit or roll back (image_slots) --------------------------


def _install(h: Harness, tmp_path: Path, version: str) -> None:
    h.driver.image_dir = make_image(tmp_path / f"installed-{version}", version, guest_arch())


def _healthy(monkeypatch: pytest.MonkeyPatch, verdict: PinnaceError | None = None) -> list[str]:
    checked: list[str] = []

    async def check(open_channel, ssh, deadline) -> None:  # noqa: ANN001
        checked.append("checked")
        if verdict is not None:
            raise verdict

    monkeypatch.setattr("hypervisor.agent.image_health.check", check)
    return checked


def test_an_updated_image_boots_is_judged_and_becomes_known_good(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    checked = _healthy(monkeypatch)

    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        assert h.board.status.image_version == "1.0" and h.board.status.image_role == "known good"
        assert checked == []  # a first image has nothing to fall back to: ready is enough
        _install(h, tmp_path, "2.0")
        await h.agent.operate("restart")
        assert h.driver.booted == ["1.0", "2.0"] and checked == ["checked"]
        status = h.board.status
        assert (status.image_version, status.image_role, status.state) == ("2.0", "known good", "running")
        assert "updated to 2.0" in status.image_notice and status.image_notice_id == 1
        record = h.agent.slots.load()
        assert record.previous and record.known_good != record.previous

    run(scenario())


def test_a_candidate_that_fails_to_boot_rolls_back_without_an_error_state(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    _healthy(monkeypatch)

    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        _install(h, tmp_path, "2.0")
        h.driver.broken_versions = {"2.0"}
        h.states()
        await h.agent.operate("restart")
        assert h.driver.booted == ["1.0", "2.0", "1.0"]
        assert h.driver.calls[-3:] == ["boot", "kill", "boot"]
        assert h.states() == ["stopping", "stopped", "starting", "running"]  # never "error"
        status = h.board.status
        assert status.image_version == "1.0" and status.image_role == "known good"
        assert "rolled back to 1.0" in status.image_notice and "version 2.0 is broken" in status.image_notice
        # the failed image is not tried again at the next start
        await h.agent.operate("restart")
        assert h.driver.booted[-1] == "1.0" and "is not booted" in h.board.status.image_note

    run(scenario())


def test_a_candidate_that_fails_its_health_check_rolls_back(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from hypervisor.agent.image_health import HealthError

    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        _install(h, tmp_path, "2.0")
        _healthy(monkeypatch, HealthError("health check failed: the data disk is not mounted at /data"))
        await h.agent.operate("restart")
        assert h.driver.booted == ["1.0", "2.0", "1.0"] and h.board.status.state == "running"
        assert "not mounted at /data" in h.board.status.image_notice

    run(scenario())


def test_when_the_fallback_fails_too_the_candidate_is_not_blamed(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    _healthy(monkeypatch)

    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        _install(h, tmp_path, "2.0")
        h.driver.broken_versions = {"2.0", "1.0"}
        with pytest.raises(PinnaceError, match="failed as well"):
            await h.agent.operate("restart")
        assert h.board.status.state == "error"
        assert h.agent.slots.load().failed == {}  # 2.0 stays a candidate for the next start
        h.driver.broken_versions = set()
        await h.agent.operate("restart")
        assert h.driver.booted[-1] == "2.0" and h.board.status.image_role == "known good"

    run(scenario())


def test_a_candidate_whose_qemu_dies_while_booting_rolls_back_instead_of_failing(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001, E501
    _healthy(monkeypatch)

    async def scenario() -> None:
        h = Harness(tmp_path)
        await h.agent.boot()
        _install(h, tmp_path, "2.0")
        real_wait = h.driver.wait_for_guest

        async def panics(deadline: float) -> None:
            if h.driver.booted[-1] == "2.0":
                h.driver.exit_reason_text = "the guest powered off by itself"
                h.driver.die()  # the exit watcher sees it first; the boot step would wait on
                await asyncio.sleep(3600)
            await real_wait(deadline)

        h.driver.wait_for_guest = panics
        h.states()
        await h.agent.operate("restart")
        assert h.driver.booted == ["1.0", "2.0", "1.0"]
        assert "error" not in h.states() and h.board.status.state == "running"
        assert "powered off by itself" in h.board.status.image_notice

    run(scenario())


def test_a_missing_qemu_is_named_before_a_missing_image(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(tmp_path)
        h.driver.image_dir = None
        h.driver.preflight_error = MachineError("QEMU not found: /nonexistent/qemu")
        with pytest.raises(PinnaceError, match="/nonexistent/qemu"):
            await h.agent.boot()
        assert h.board.status.state == "error" and "/nonexistent/qemu" in h.board.status.reason

    run(scenario())
