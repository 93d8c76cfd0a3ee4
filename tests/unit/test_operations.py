"""The one start/stop/restart/reset policy (hypervisor.operations) against a fake agent."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import cli
from hypervisor import launcher, operations
from hypervisor import settings as settings_mod
from hypervisor.control import Status
from hypervisor.errors import ControlError, OperationError
from hypervisor.operations import Step
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts, Settings

HOST = HostFacts(cpus=4, memory_mib=8192, os="linux")


def status(state: str, reason: str = "") -> Status:
    return Status("test", state=state, reason=reason)


class FakeClient:
    """An agent: answers status, records calls, replays a watch stream."""

    def __init__(self, state: str = "running", alive: bool = True, stream: tuple[Status, ...] = (),
                 replies: dict[str, Status | Exception] | None = None) -> None:
        self.state, self.alive, self.stream = state, alive, stream
        self.replies = replies or {}
        self.calls: list[str] = []

    def is_alive(self) -> bool:
        return self.alive

    def status(self) -> Status:
        return status(self.state)

    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]:
        self.calls.append(op)
        reply = self.replies.get(op, status("stopped" if op == "stop" else "running"))
        if isinstance(reply, Exception):
            raise reply
        return reply.to_dict()

    def watch(self, timeout: float | None = None) -> Iterator[Status]:
        yield from self.stream


class FakeAgents(operations.Agents):
    def __init__(self, client: FakeClient, spawned: FakeClient | Exception | None = None,
                 qemu: bool = False) -> None:
        self._client, self.spawned, self.qemu = client, spawned, qemu
        self.ensured = 0

    def client(self, paths: Paths) -> FakeClient:
        return self._client

    def ensure_agent(self, paths: Paths) -> FakeClient:
        self.ensured += 1
        if isinstance(self.spawned, Exception):
            raise self.spawned
        return self.spawned or self._client

    def qemu_running(self, paths: Paths) -> bool:
        return self.qemu


DEAD = dict(state="stopped", alive=False)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths.for_instance("test", {"PINNACE_HOME": str(tmp_path)})
    p.ensure_dirs()
    return p


def two_cpus(paths: Paths) -> operations.SettingsChange:
    new = dataclasses.replace(Settings.defaults(HOST), cpus=2)
    return operations.change_settings(paths, new, HOST)


# --- start ---------------------------------------------------------------------------------------


def test_failed_start_restores_the_settings(paths: Paths) -> None:
    paths.settings_file.write_text("cpus = 1\n")
    change = two_cpus(paths)
    assert "cpus = 2" in paths.settings_file.read_text()
    spawned = FakeClient(stream=(status("starting"), status("error", "the guest did not boot")))
    with pytest.raises(OperationError) as err:
        operations.start(paths, change, agents=FakeAgents(FakeClient(**DEAD), spawned))
    assert err.value.op == "start" and str(err.value) == "the guest did not boot"
    assert paths.settings_file.read_text() == "cpus = 1\n"


def test_failed_start_removes_settings_that_did_not_exist(paths: Paths) -> None:
    change = two_cpus(paths)
    with pytest.raises(OperationError):
        operations.start(paths, change, agents=FakeAgents(FakeClient(**DEAD), FakeClient(stream=(status("error"),))))
    assert not paths.settings_file.exists()


def test_start_that_cannot_spawn_the_agent_restores_the_settings(paths: Paths) -> None:
    paths.settings_file.write_text("cpus = 1\n")
    change = two_cpus(paths)
    agents = FakeAgents(FakeClient(**DEAD), ControlError("the agent exited at start"))
    with pytest.raises(ControlError):
        operations.start(paths, change, agents=agents)
    assert paths.settings_file.read_text() == "cpus = 1\n"


class QuickToFail(FakeAgents):
    """An agent that writes its error to state.json and exits before the watch reads anything."""

    def __init__(self, paths: Paths, reason: str) -> None:
        super().__init__(FakeClient(**DEAD), FakeClient(stream=()))
        self.paths, self.reason = paths, reason

    def ensure_agent(self, paths: Paths) -> FakeClient:
        if self.reason:
            self.paths.state_file.write_text(json.dumps(status("error", self.reason).to_dict()))
        return super().ensure_agent(paths)


def test_an_agent_that_failed_before_the_watch_is_heard_through_its_last_words(paths: Paths) -> None:
    with pytest.raises(OperationError, match="QEMU not found: /nonexistent/qemu"):
        operations.start(paths, agents=QuickToFail(paths, "QEMU not found: /nonexistent/qemu"))


def test_last_words_of_an_earlier_run_are_not_taken_for_this_one(paths: Paths) -> None:
    paths.state_file.write_text(json.dumps(status("error", "an old failure").to_dict()))
    os.utime(paths.state_file, (time.time() - 60, time.time() - 60))
    with pytest.raises(ControlError, match="stopped before reporting"):
        operations.start(paths, agents=QuickToFail(paths, ""))


def test_start_follows_the_boot_and_keeps_the_new_settings(paths: Paths) -> None:
    change = two_cpus(paths)
    steps: list[Step] = []
    updates: list[str] = []
    spawned = FakeClient(stream=(status("starting"), status("running")))
    agents = FakeAgents(FakeClient(**DEAD), spawned)
    final = operations.start(paths, change, on_step=steps.append, on_update=lambda s: updates.append(s.state),
                             agents=agents)
    assert final.state == "running" and steps == [Step.STARTING] and updates == ["starting", "running"]
    assert settings_mod.load(paths.settings_file, HOST).cpus == 2


def test_start_when_running_touches_nothing(paths: Paths) -> None:
    steps: list[Step] = []
    agents = FakeAgents(FakeClient("running"))
    assert operations.start(paths, on_step=steps.append, agents=agents).state == "running"
    assert steps == [Step.ALREADY_RUNNING] and agents.ensured == 0 and agents._client.calls == []


def test_start_re_adopts_a_vm_without_its_agent(paths: Paths) -> None:
    steps: list[Step] = []
    agents = FakeAgents(FakeClient(**DEAD), FakeClient(stream=(status("running"),)), qemu=True)
    operations.start(paths, on_step=steps.append, agents=agents)
    assert steps == [Step.READOPTING, Step.STARTING] and agents.ensured == 1


def test_start_without_waiting_returns_once_the_agent_boots(paths: Paths) -> None:
    spawned = FakeClient("starting", stream=(status("error"),))  # never read
    final = operations.start(paths, wait=False, agents=FakeAgents(FakeClient(**DEAD), spawned))
    assert final.state == "starting"


def test_start_of_an_agent_that_outlived_its_vm_boots_it_again(paths: Paths) -> None:
    client = FakeClient("error")
    assert operations.start(paths, agents=FakeAgents(client)).state == "running"
    assert client.calls == ["restart"]


# --- stop, restart, reset ------------------------------------------------------------------------


def test_stop_when_nothing_runs(paths: Paths) -> None:
    steps: list[Step] = []
    agents = FakeAgents(FakeClient(**DEAD))
    assert operations.stop(paths, on_step=steps.append, agents=agents) is False
    assert steps == [Step.NOT_RUNNING] and agents.ensured == 0


def test_stop_re_adopts_then_stops(paths: Paths) -> None:
    adopted = FakeClient()
    agents = FakeAgents(FakeClient(**DEAD), adopted, qemu=True)
    assert operations.stop(paths, agents=agents) is True
    assert adopted.calls == ["stop"]


def test_restart_of_a_running_vm_and_of_nothing(paths: Paths) -> None:
    client = FakeClient()
    assert operations.restart(paths, agents=FakeAgents(client)).state == "running"
    assert client.calls == ["restart"]
    steps: list[Step] = []
    agents = FakeAgents(FakeClient(**DEAD), FakeClient(stream=(status("running"),)))
    operations.restart(paths, on_step=steps.append, agents=agents)
    assert steps == [Step.STARTING], "nothing ran: a restart is a start"


def test_failed_restart_restores_the_settings(paths: Paths) -> None:
    paths.settings_file.write_text("cpus = 1\n")
    change = two_cpus(paths)
    client = FakeClient(replies={"restart": status("error", "no memory")})
    with pytest.raises(OperationError) as err:
        operations.restart(paths, change, agents=FakeAgents(client))
    assert err.value.op == "restart" and err.value.status.reason == "no memory"
    assert paths.settings_file.read_text() == "cpus = 1\n"


def test_reset_of_a_running_vm_goes_through_its_agent(paths: Paths) -> None:
    paths.data_disk.write_bytes(b"data")
    client = FakeClient()
    operations.reset(paths, agents=FakeAgents(client))
    assert client.calls == ["reset"] and paths.data_disk.exists(), "the agent deletes it after a clean stop"


def test_reset_with_nothing_running_deletes_then_boots(paths: Paths) -> None:
    paths.data_disk.write_bytes(b"data")
    paths.keys_dir.mkdir(parents=True, exist_ok=True)
    (paths.keys_dir / "client").write_text("key")
    paths.settings_file.write_text("cpus = 1\n")
    steps: list[Step] = []
    agents = FakeAgents(FakeClient(**DEAD), FakeClient(stream=(status("running"),)))
    operations.reset(paths, on_step=steps.append, agents=agents)
    assert steps == [Step.WIPED] and agents.ensured == 1
    assert not paths.data_disk.exists() and not paths.keys_dir.exists()
    assert paths.settings_file.read_text() == "cpus = 1\n"


def test_failed_reset_says_why(paths: Paths) -> None:
    client = FakeClient(replies={"reset": status("error", "mkfs failed")})
    with pytest.raises(OperationError, match="mkfs failed"):
        operations.reset(paths, agents=FakeAgents(client))


# --- what a reset deletes ------------------------------------------------------------------------


def test_reset_preview_without_an_engine(paths: Paths) -> None:
    preview = operations.reset_preview(paths, None)
    assert preview.engine is None and preview.data_disk is None and preview.data_disk_bytes == 0
    paths.data_disk.write_bytes(b"x" * 8192)
    running = Status("test", state="running", docker_socket=str(paths.docker_socket))  # nothing listens
    preview = operations.reset_preview(paths, running)
    assert preview.engine is None and preview.data_disk == paths.data_disk and preview.data_disk_bytes > 0
    assert preview.settings_file == paths.settings_file


# --- the CLI is a renderer of these operations ---------------------------------------------------


@pytest.fixture
def fake_launcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, FakeClient]:
    """The default Agents reach the launcher: replace its functions (no agent is spawned)."""
    clients = {"current": FakeClient(**DEAD), "spawned": FakeClient(stream=(status("error", "no kvm"),))}
    monkeypatch.setenv("PINNACE_HOME", str(tmp_path))
    monkeypatch.setattr(launcher, "client", lambda _p, timeout=5.0: clients["current"])
    monkeypatch.setattr(launcher, "ensure_agent", lambda _p, timeout=20.0: clients["spawned"])
    monkeypatch.setattr(launcher, "qemu_running", lambda _p: False)
    return clients


def test_cli_start_failure_restores_settings_and_says_so(fake_launcher: dict[str, FakeClient], paths: Paths,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--name", "test", "start", "--cpus", "1"]) == 1
    out, err = capsys.readouterr()
    assert f"Starting Pinnace instance '{paths.instance}'…" in out
    assert err.strip() == "pinnace: start failed: no kvm (details: pinnace logs)"
    assert not paths.settings_file.exists(), "a failed start keeps no override"


def test_cli_stop_and_restart_messages(fake_launcher: dict[str, FakeClient], paths: Paths,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--name", "test", "stop"]) == 0
    assert "is not running" in capsys.readouterr().out
    failing = FakeClient(replies={"restart": status("error", "guest panic")})
    fake_launcher["current"] = fake_launcher["spawned"] = failing
    assert cli.main(["--name", "test", "restart"]) == 1
    out, err = capsys.readouterr()
    assert "Restarting 'test'…" in out and err.strip() == "pinnace: restart failed: guest panic"
