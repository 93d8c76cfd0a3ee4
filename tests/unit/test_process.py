"""hypervisor.process: real processes on this host, and the Windows strategy through its pure parts
(flags, argv, verdicts over a fake kernel32) so it is exercised on Linux too."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypervisor import platform as hplatform
from hypervisor import process
from hypervisor.platform import WindowsPlatform
from hypervisor.platform import windows as win

WIN_CREATE_NEW_PROCESS_GROUP = 0x00000200
WIN_DETACHED_PROCESS = 0x00000008
WIN_CREATE_NO_WINDOW = 0x08000000
SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX sessions and signals")


# --- pure: flags and argv -------------------------------------------------------------------


def test_win32_constants_have_the_documented_values() -> None:
    assert win.CREATE_NEW_PROCESS_GROUP == WIN_CREATE_NEW_PROCESS_GROUP
    assert win.DETACHED_PROCESS == WIN_DETACHED_PROCESS
    assert win.CREATE_NO_WINDOW == WIN_CREATE_NO_WINDOW
    assert (win.PROCESS_QUERY_LIMITED_INFORMATION, win.PROCESS_TERMINATE) == (0x1000, 0x0001)
    assert (win.SYNCHRONIZE, win.STILL_ACTIVE) == (0x00100000, 259)


def test_spawn_options_detach_per_platform() -> None:
    for plat in ("linux", "darwin"):
        assert process.spawn_options(plat) == {"start_new_session": True, "close_fds": True}
    win = process.spawn_options("win32")
    assert win == {"creationflags": 0x08000200, "close_fds": True}
    assert "start_new_session" not in win  # ignored on Windows: it would detach nothing
    # CREATE_NO_WINDOW is ignored next to DETACHED_PROCESS: the pair would give no hidden console.
    assert not win["creationflags"] & WIN_DETACHED_PROCESS


def test_no_window_options() -> None:
    assert process.no_window_options("win32") == {"creationflags": WIN_CREATE_NO_WINDOW}
    assert process.no_window_options("linux") == {}  # creationflags is a ValueError on POSIX


def test_command_line_argv_windows_is_a_cim_query_by_absolute_path() -> None:
    argv = process.command_line_argv(1234, "win32", env={"SystemRoot": "D:\\Win\\"})
    assert argv[:5] == ["D:\\Win\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
                        "-NoLogo", "-NoProfile", "-NonInteractive", "-Command"]
    assert len(argv) == 6
    assert "(Get-CimInstance -ClassName Win32_Process -Filter 'ProcessId=1234').CommandLine" in argv[5]
    assert argv[5].startswith("[Console]::OutputEncoding = [Text.Encoding]::UTF8;")
    assert win.powershell_exe({}) == "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"


def test_command_line_argv_elsewhere_is_ps() -> None:
    assert process.command_line_argv(77, "darwin") == ["ps", "-p", "77", "-o", "command="]
    for bad in (0, -5, "1; Stop-Process 1"):
        with pytest.raises(ValueError):
            process.command_line_argv(bad, "win32")  # type: ignore[arg-type]


def test_names_instance_matches_the_whole_name() -> None:
    line = "qemu-system-x86_64 -name pinnace-dev,process=pinnace-dev -nodefaults"
    assert process.names_instance(line, "dev")
    assert not process.names_instance(line, "de")
    assert not process.names_instance(line.replace("=pinnace-dev ", "=pinnace-dev2 "), "dev")
    assert process.names_instance("qemu -name pinnace-dev,process=pinnace-dev", "dev")  # end of line
    assert process.names_instance('qemu.exe "-name" "pinnace-dev,process=pinnace-dev" -S', "dev")


# --- Windows verdicts over a fake kernel32 -----------------------------------------------------


class FakeKernel32:
    """Scripted OpenProcess / GetExitCodeProcess / TerminateProcess / WaitForSingleObject."""

    def __init__(self, open_error: int = 0, codes: list[int | None] | None = None,
                 terminates: bool = True, exits: bool = True) -> None:
        self.open_error, self.codes, self.terminates, self.exits = open_error, list(codes or [259]), terminates, exits
        self.opened: list[tuple[int, int]] = []
        self.closed: list[int] = []
        self.terminated: list[tuple[int, int]] = []
        self.waited: list[int] = []

    def open(self, access: int, pid: int) -> tuple[int | None, int]:
        self.opened.append((access, pid))
        return (None, self.open_error) if self.open_error else (100 + pid, 0)

    def exit_code(self, handle: int) -> int | None:
        return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]

    def terminate(self, handle: int, code: int) -> bool:
        self.terminated.append((handle, code))
        return self.terminates

    def wait(self, handle: int, timeout_ms: int) -> bool:
        self.waited.append(timeout_ms)
        return self.exits

    def close(self, handle: int) -> None:
        self.closed.append(handle)


def test_windows_alive_verdicts() -> None:
    running = FakeKernel32(codes=[259])
    assert win.process_alive(7, running)
    assert running.opened == [(0x1000, 7)] and running.closed == [107]
    assert not win.process_alive(7, FakeKernel32(codes=[0]))  # exited with 0
    assert not win.process_alive(7, FakeKernel32(codes=[None]))  # cannot tell: not ours to adopt
    assert not win.process_alive(7, FakeKernel32(open_error=87))  # ERROR_INVALID_PARAMETER: no such pid
    assert win.process_alive(7, FakeKernel32(open_error=5))  # ERROR_ACCESS_DENIED: exists, not ours


def test_windows_terminate_kills_then_waits_on_the_handle(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeKernel32(codes=[259])
    win.terminate_process(9, 5.0, api)
    access, pid = api.opened[0]
    assert pid == 9 and access == 0x0001 | 0x1000 | 0x00100000
    assert api.terminated == [(109, 1)] and api.waited == [5000] and api.closed == [109]
    assert not caplog.records


def test_windows_terminate_leaves_the_dead_alone(caplog: pytest.LogCaptureFixture) -> None:
    gone = FakeKernel32(open_error=87)
    win.terminate_process(9, 1.0, gone)
    exited = FakeKernel32(codes=[0])
    win.terminate_process(9, 1.0, exited)
    assert gone.terminated == exited.terminated == [] and exited.closed == [109]
    assert not caplog.records


def test_windows_terminate_reports_what_it_could_not_do(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hypervisor.platform")
    win.terminate_process(9, 1.0, FakeKernel32(open_error=5))
    win.terminate_process(9, 1.0, FakeKernel32(codes=[259, 259], terminates=False))
    raced = FakeKernel32(codes=[259, 0], terminates=False)  # it was exiting anyway: no warning
    win.terminate_process(9, 1.0, raced)
    win.terminate_process(9, 1.0, FakeKernel32(exits=False))
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["cannot open process 9 to end it (Windows error 5)",
                        "TerminateProcess failed for process 9", "process 9 survived TerminateProcess"]
    assert raced.closed == [109]


# --- the public functions take the Windows strategy there and never os.kill ----------------------


@pytest.fixture
def as_windows(monkeypatch: pytest.MonkeyPatch) -> FakeKernel32:
    api = FakeKernel32(codes=[259, 259])

    def no_kill(*_args: object) -> None:
        raise AssertionError("os.kill on Windows is TerminateProcess, never a probe")

    monkeypatch.setattr(os, "kill", no_kill)
    monkeypatch.setattr(hplatform, "current", lambda: WindowsPlatform(process_api=lambda: api))
    return api


def test_alive_and_terminate_use_kernel32_on_windows(as_windows: FakeKernel32) -> None:
    assert process.alive(4321)
    process.terminate(4321, grace=1.0)
    assert as_windows.terminated == [(4421, 1)] and as_windows.waited == [3000]
    assert not process.alive(0) and not process.alive(None)


def test_command_line_runs_powershell_without_a_window(as_windows: FakeKernel32,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.update(kwargs, argv=argv)
        return subprocess.CompletedProcess(argv, 0, "qemu.exe -name pinnace-dev,process=pinnace-dev\r\n", "")

    monkeypatch.setattr(subprocess, "run", run)
    assert process.is_our_qemu(4321, "dev")
    assert str(seen["argv"][0]).endswith("\\WindowsPowerShell\\v1.0\\powershell.exe")  # type: ignore[index]
    assert seen["creationflags"] == WIN_CREATE_NO_WINDOW and seen["encoding"] == "utf-8"
    assert seen["timeout"] == win.POWERSHELL_TIMEOUT_S


def test_spawn_passes_the_windows_flags(as_windows: FakeKernel32, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(subprocess, "Popen", lambda argv, **kwargs: seen.update(kwargs))
    process.spawn(["qemu.exe"], tmp_path / "qemu.log")
    assert seen["creationflags"] == 0x08000200 and seen["close_fds"] is True
    assert "start_new_session" not in seen


# --- real processes on this host ----------------------------------------------------------------


@pytest.fixture
def sleeper(tmp_path: Path):
    proc = process.spawn([*SLEEPER, "-name", "pinnace-utest,process=pinnace-utest"], tmp_path / "err.log")
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@posix_only
def test_spawn_starts_a_new_session(sleeper: subprocess.Popen[bytes]) -> None:
    assert os.getsid(sleeper.pid) == sleeper.pid != os.getsid(0)


def _command_line_soon(pid: int) -> str:
    """Popen returns once exec has begun; the new argv shows a moment later (Linux sets it up last)."""
    deadline = time.monotonic() + 5
    while not (line := process.command_line(pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return line


def test_alive_and_command_line_of_a_real_process(sleeper: subprocess.Popen[bytes]) -> None:
    assert process.alive(os.getpid()) and process.alive(sleeper.pid)
    assert "process=pinnace-utest" in _command_line_soon(sleeper.pid)
    assert process.is_our_qemu(sleeper.pid, "utest")
    assert not process.is_our_qemu(sleeper.pid, "utes") and not process.is_our_qemu(sleeper.pid, "other")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="zombies are read from /proc")
def test_a_zombie_is_dead(sleeper: subprocess.Popen[bytes]) -> None:
    os.kill(sleeper.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process.alive(sleeper.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sleeper.returncode is None  # not reaped yet: a zombie
    assert not process.alive(sleeper.pid)


@posix_only
def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    stubborn = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); " \
               "time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline()  # the handler is installed
        started = time.monotonic()
        process.terminate(proc.pid, grace=0.3)
        assert proc.wait(5) == -signal.SIGKILL
        assert time.monotonic() - started < 4
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="needs Windows: kernel32 and PowerShell")
def test_windows_real_process_lifecycle(sleeper: subprocess.Popen[bytes]) -> None:
    assert process.alive(sleeper.pid)
    assert "process=pinnace-utest" in _command_line_soon(sleeper.pid)
    process.terminate(sleeper.pid, grace=1.0)
    assert sleeper.wait(5) == win.TERMINATED_EXIT_CODE
    assert not process.alive(sleeper.pid)  # our Popen still holds the handle: the exit code says dead
    assert process.alive(os.getpid())


@pytest.mark.skipif(sys.platform == "win32", reason="the non-Windows side of the guard")
def test_kernel32_is_bound_only_when_called_on_windows() -> None:
    with pytest.raises(AttributeError):  # ctypes.WinDLL exists only on Windows
        win.Kernel32()
