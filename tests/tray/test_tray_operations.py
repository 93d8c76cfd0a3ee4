"""The tray and the CLI are two renderers of the same hypervisor.operations functions, and read a
dead agent's state.json the same way (launcher.last_status)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.tray.controller import InstanceController
from hypervisor import operations
from hypervisor.control import Status
from hypervisor.paths import Paths
from tests.tray.fakes import DeadClient, SlowClient
from tests.tray.helpers import running_status


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths.for_instance("default", {"PINNACE_HOME": str(tmp_path)})
    p.ensure_dirs()
    return p


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Replace the four operations with recorders that answer `running`."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for name in ("start", "stop", "restart", "reset"):
        def fake(paths: Paths, *args: object, _name: str = name, **kwargs: Any) -> Any:
            calls.append((_name, {"args": args, **kwargs}))
            return True if _name == "stop" else Status(paths.instance, state="running")

        monkeypatch.setattr(operations, name, fake)
    return calls


def test_tray_and_cli_call_the_same_operations(qtbot, paths: Paths, recorded, monkeypatch) -> None:  # noqa: ANN001
    controller = InstanceController(paths, client_factory=lambda: SlowClient(running_status(), 0), watch=False)
    for op in ("start", "stop", "restart", "reset"):
        with qtbot.waitSignal(controller.operation_done, timeout=5000):
            getattr(controller, op)()
    assert [name for name, _ in recorded] == ["start", "stop", "restart", "reset"]
    assert all(kwargs["agents"] is controller.agents for _, kwargs in recorded)
    assert recorded[0][1]["wait"] is False, "the tray's start returns while the boot goes on (Stop stays offered)"

    recorded.clear()
    monkeypatch.setattr(cli, "_print_ready", lambda *_a: None)
    monkeypatch.setattr(cli, "_current_disk_gib", lambda _p: None)
    args = argparse.Namespace(cpus=None, memory_mib=None, disk_gib=None, accel=None, use_context=False, yes=True)
    for name, command in (("start", cli.cmd_start), ("stop", cli.cmd_stop), ("restart", cli.cmd_restart)):
        assert command(paths, args) == 0
        assert recorded[-1][0] == name


def test_settings_restart_hands_its_change_to_the_operation(qtbot, paths: Paths, recorded) -> None:  # noqa: ANN001
    controller = InstanceController(paths, client_factory=lambda: SlowClient(running_status(), 0), watch=False)
    change = operations.SettingsChange(paths.settings_file, None)
    with qtbot.waitSignal(controller.operation_done, timeout=5000):
        controller.restart(change)
    assert recorded == [("restart", {"args": (change,), "agents": controller.agents})]


def test_failed_start_is_reported_with_its_reason(qtbot, paths: Paths) -> None:  # noqa: ANN001
    controller = InstanceController(paths, client_factory=lambda: SlowClient(Status("default", state="error"), 0),
                                    watch=False)
    controller.agents.client = lambda _p: _Refusing()  # type: ignore[method-assign]
    with qtbot.waitSignal(controller.operation_failed, timeout=5000) as failed:
        controller.start()
    assert failed.args == ["start", "QEMU exited unexpectedly (exit code 1)"]


class _Refusing(SlowClient):
    """An agent that outlived its VM and whose new boot fails."""

    def __init__(self) -> None:
        super().__init__(Status("default", state="error"), delay=0)

    def call(self, op: str, timeout: float | None = None) -> dict[str, Any]:
        super().call(op, timeout)
        return Status("default", state="error", reason="QEMU exited unexpectedly (exit code 1)").to_dict()


def test_watcher_reads_a_dead_agent_as_the_launcher_does(qtbot, paths: Paths) -> None:  # noqa: ANN001
    """state.json says running but no QEMU runs: error (the CLI's answer), not stopped."""
    paths.state_file.write_text(json.dumps(Status("default", state="running", docker_socket="/x").to_dict()))
    controller = InstanceController(paths, client_factory=DeadClient)
    assert controller.watcher is not None
    with qtbot.waitSignal(controller.status_changed, timeout=5000) as got:
        controller.start_watching()
    controller.shutdown()
    status = got.args[0]
    assert status.state == "error" and "no longer running" in status.reason and status.docker_socket == ""
