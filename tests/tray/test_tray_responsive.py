"""Agent calls never block the GUI thread: a QTimer keeps firing while a 2 s call is in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from PySide6.QtCore import QTimer

from app.tray.controller import InstanceController
from app.tray.tasks import run_task
from app.tray.watcher import StatusWatcher
from hypervisor.paths import Paths
from tests.tray.fakes import DeadClient, SlowClient
from tests.tray.helpers import running_status


def make_paths(tmp_path: Path) -> Paths:
    return Paths.for_instance("default", {"PINNACE_HOME": str(tmp_path)})


def test_event_loop_ticks_during_slow_stop(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    client = SlowClient(running_status(), delay=2.0)
    controller = InstanceController(make_paths(tmp_path), client_factory=lambda: client, watch=False)
    controller.status = running_status()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(50)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()

    started = time.monotonic()
    with qtbot.waitSignal(controller.operation_done, timeout=10_000) as done:
        controller.stop()
        assert controller.busy  # returned at once, with the call still in flight
        assert time.monotonic() - started < 0.5
    timer.stop()

    assert done.args == ["stop"]
    assert time.monotonic() - started >= 2.0
    assert len(ticks) >= 20, f"the GUI thread stalled: only {len(ticks)} ticks in 2 s"
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) < 0.5
    assert client.calls[0][0] == "stop" and client.calls[0][2] != threading.main_thread().name
    assert not controller.busy


def test_task_callbacks_run_on_the_gui_thread(qtbot) -> None:  # noqa: ANN001
    seen: list[str] = []
    parent = QTimer()  # any QObject owned by the GUI thread
    done = threading.Event()

    def on_ok(result: object) -> None:
        seen.append(threading.current_thread().name)
        seen.append(str(result))
        done.set()

    run_task(lambda: threading.current_thread().name, parent, on_ok)
    qtbot.waitUntil(done.is_set, timeout=5000)
    assert seen[0] == threading.main_thread().name
    assert seen[1] != threading.main_thread().name  # the work itself ran elsewhere


def test_errors_come_back_as_signals(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    controller = InstanceController(
        make_paths(tmp_path),
        client_factory=DeadClient,
        ensure_agent=lambda _p: (_ for _ in ()).throw(RuntimeError("qemu-system-x86_64 not found")),
        watch=False,
    )
    with qtbot.waitSignal(controller.notice, timeout=5000) as notice:
        controller.start()
    assert notice.args[0].title == "Pinnace could not start"
    assert notice.args[0].message == "qemu-system-x86_64 not found"
    assert not controller.busy


def test_watcher_reports_no_agent_without_blocking(qtbot) -> None:  # noqa: ANN001
    watcher = StatusWatcher(DeadClient, fallback=lambda: None, min_delay=0.05)
    with qtbot.waitSignal(watcher.status, timeout=5000) as got:
        watcher.start()
    watcher.stop(wait=5)
    assert not watcher._thread.is_alive()  # type: ignore[union-attr]
    assert got.args == [None]


def test_watcher_emits_agent_statuses(qtbot) -> None:  # noqa: ANN001
    client = SlowClient(running_status())
    watcher = StatusWatcher(lambda: client, fallback=lambda: None)
    with qtbot.waitSignal(watcher.status, timeout=5000, check_params_cb=lambda s: s is not None) as got:
        watcher.start()
    watcher.stop(wait=5)
    assert not watcher._thread.is_alive()  # type: ignore[union-attr]
    assert got.args[0].state == "running"
