"""Starting, finding and ending the QEMU process (the seam tests and adoption rely on).

QEMU runs detached from the agent (its own session on POSIX; its own process group and hidden
console on Windows) so that it outlives an agent that crashes: the next agent finds it again
through the pidfile and the QMP socket instead of booting a second VM.

Windows is not POSIX here: `os.kill(pid, 0)` there is TerminateProcess, not a probe, and there is
no SIGKILL and no `ps`. So the Windows branches use kernel32 through ctypes (`_win32()`, called
only on win32) and PowerShell's CIM query; what can be pure (flags, argv, verdicts) is, and takes
the platform as an argument so it is tested on any host.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from hypervisor.errors import MachineError

log = logging.getLogger(__name__)

# Win32 process creation flags (subprocess only defines them on Windows).
DETACHED_PROCESS = 0x00000008
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
# Win32 process access rights, codes and errors.
PROCESS_TERMINATE = 0x0001
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
SYNCHRONIZE = 0x00100000
STILL_ACTIVE = 259
WAIT_OBJECT_0 = 0
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87  # what OpenProcess reports for a pid that does not exist
TERMINATED_EXIT_CODE = 1

PS_TIMEOUT_S = 5.0
POWERSHELL_TIMEOUT_S = 20.0  # a cold PowerShell start takes seconds


def is_windows(platform: str | None = None) -> bool:
    return (sys.platform if platform is None else platform) == "win32"


def spawn_options(platform: str | None = None) -> dict[str, Any]:
    """Popen keywords that detach a long-lived child (QEMU, the agent) from its parent.

    POSIX: a new session, so the terminal's SIGHUP/SIGINT never reach it. Windows: a new process
    group (no Ctrl+C from the parent's console) with its own hidden console (CREATE_NO_WINDOW), so
    closing the terminal does not end it and no window appears; its console children (qemu-img,
    probes, PowerShell) share that hidden console instead of each opening a window, which
    DETACHED_PROCESS would not give (and CREATE_NO_WINDOW is ignored together with it).
    """
    if is_windows(platform):
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW, "close_fds": True}
    return {"start_new_session": True, "close_fds": True}


def no_window_options(platform: str | None = None) -> dict[str, Any]:
    """Popen keywords for a short helper command: no console window when the caller has none
    (the tray runs under pythonw). Empty on POSIX, where creationflags is an error."""
    return {"creationflags": CREATE_NO_WINDOW} if is_windows(platform) else {}


def spawn(argv: list[str], stderr_log: Path) -> subprocess.Popen[bytes]:
    stderr_log.parent.mkdir(parents=True, exist_ok=True)
    with open(stderr_log, "ab") as err:
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, **spawn_options())
        except OSError as exc:
            raise MachineError(f"cannot start {argv[0]}", exc) from exc


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    if is_windows():
        return _windows_alive(pid, _win32())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform.startswith("linux"):
        try:  # a zombie is dead for our purposes
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        except (OSError, IndexError):
            return False
    return True


def powershell_exe(env: dict[str, str] | None = None) -> str:
    r"""Windows PowerShell by absolute path (under %SystemRoot%), not whatever `powershell` the
    current directory or PATH offers."""
    env = dict(os.environ) if env is None else env
    root = env.get("SystemRoot") or env.get("SYSTEMROOT") or "C:\\Windows"
    return root.rstrip("\\") + "\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"


def command_line_argv(pid: int, platform: str | None = None, env: dict[str, str] | None = None) -> list[str]:
    """The command that prints `pid`'s command line where /proc is missing (macOS, Windows)."""
    pid = int(pid)
    if pid <= 0:
        raise ValueError(f"not a process id: {pid}")
    if is_windows(platform):
        script = ("[Console]::OutputEncoding = [Text.Encoding]::UTF8; "
                  f"(Get-CimInstance -ClassName Win32_Process -Filter 'ProcessId={pid}').CommandLine")
        return [powershell_exe(env), "-NoLogo", "-NoProfile", "-NonInteractive", "-Command", script]
    return ["ps", "-p", str(pid), "-o", "command="]


def command_line(pid: int) -> str:
    if sys.platform.startswith("linux"):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    try:
        argv = command_line_argv(pid)
        windows = is_windows()
        return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, text=True,
                              encoding="utf-8" if windows else None, errors="replace",
                              timeout=POWERSHELL_TIMEOUT_S if windows else PS_TIMEOUT_S,
                              **no_window_options()).stdout
    except (OSError, ValueError, subprocess.SubprocessError):
        return ""


def names_instance(command: str, instance: str) -> bool:
    """True when a QEMU command line carries `-name ...,process=pinnace-<instance>` exactly
    (so instance "dev" never claims the QEMU of "dev2")."""
    return re.search(rf"process=pinnace-{re.escape(instance)}(?=$|[\s\",])", command) is not None


def is_our_qemu(pid: int | None, instance: str) -> bool:
    """A live process whose command line names this instance (pidfiles can be stale and reused)."""
    return alive(pid) and names_instance(command_line(pid or 0), instance)


def terminate(pid: int, grace: float = 3.0) -> None:
    """End `pid`: SIGTERM, then SIGKILL after `grace` seconds.

    On Windows there is no signal a windowless QEMU would take as "shut down": the graceful path is
    QMP (system_powerdown, then quit), which the agent tries before calling this. So this goes
    straight to TerminateProcess and waits as long as POSIX would in all (`grace` + 2 s).
    """
    if is_windows():
        _windows_terminate(pid, grace + 2.0, _win32())
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(pid, wait):
            return
    log.warning("process %d survived SIGKILL", pid)


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


# --- Windows: kernel32 through ctypes ----------------------------------------------------------


class Win32Process(Protocol):
    """The four kernel32 calls the Windows branches make (a fake stands in for it in tests)."""

    def open(self, access: int, pid: int) -> tuple[int | None, int]: ...  # (handle or None, last error)
    def exit_code(self, handle: int) -> int | None: ...
    def terminate(self, handle: int, code: int) -> bool: ...
    def wait(self, handle: int, timeout_ms: int) -> bool: ...
    def close(self, handle: int) -> None: ...


def _windows_alive(pid: int, api: Win32Process) -> bool:
    """Alive while the exit code reads STILL_ACTIVE; a process we may not query exists all the same
    (as EPERM from kill(pid, 0) on POSIX). Caveat: a process that exited with 259 reads alive."""
    handle, error = api.open(PROCESS_QUERY_LIMITED_INFORMATION, pid)
    if handle is None:
        return error == ERROR_ACCESS_DENIED
    try:
        return api.exit_code(handle) == STILL_ACTIVE
    finally:
        api.close(handle)


def _windows_terminate(pid: int, timeout: float, api: Win32Process) -> None:
    """TerminateProcess, then wait on the handle: TerminateProcess only starts the termination."""
    handle, error = api.open(PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, pid)
    if handle is None:
        if error != ERROR_INVALID_PARAMETER:  # anything but "no such process"
            log.warning("cannot open process %d to end it (Windows error %d)", pid, error)
        return
    try:
        if api.exit_code(handle) not in (None, STILL_ACTIVE):
            return  # already exited
        if not api.terminate(handle, TERMINATED_EXIT_CODE):
            if api.exit_code(handle) in (None, STILL_ACTIVE):  # not merely "was exiting anyway"
                log.warning("TerminateProcess failed for process %d", pid)
            return
        if not api.wait(handle, int(max(timeout, 0.0) * 1000)):
            log.warning("process %d survived TerminateProcess", pid)
    finally:
        api.close(handle)


@functools.lru_cache(maxsize=1)
def _win32() -> Win32Process:
    """kernel32 bound once (alive() is polled several times a second); only ever called on win32."""
    return _Kernel32()


class _Kernel32:
    """Win32Process over ctypes; constructing it outside Windows fails (ctypes.WinDLL is missing)."""

    def __init__(self) -> None:
        import ctypes
        from ctypes import wintypes

        self._ctypes = ctypes
        k = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        k.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
        k.OpenProcess.restype = wintypes.HANDLE
        k.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
        k.GetExitCodeProcess.restype = wintypes.BOOL
        k.TerminateProcess.argtypes = (wintypes.HANDLE, wintypes.UINT)
        k.TerminateProcess.restype = wintypes.BOOL
        k.WaitForSingleObject.argtypes = (wintypes.HANDLE, wintypes.DWORD)
        k.WaitForSingleObject.restype = wintypes.DWORD
        k.CloseHandle.argtypes = (wintypes.HANDLE,)
        k.CloseHandle.restype = wintypes.BOOL
        self._k, self._dword = k, wintypes.DWORD

    def open(self, access: int, pid: int) -> tuple[int | None, int]:
        handle = self._k.OpenProcess(access, False, pid)
        return (handle, 0) if handle else (None, self._ctypes.get_last_error())

    def exit_code(self, handle: int) -> int | None:
        code = self._dword()
        return code.value if self._k.GetExitCodeProcess(handle, self._ctypes.byref(code)) else None

    def terminate(self, handle: int, code: int) -> bool:
        return bool(self._k.TerminateProcess(handle, code))

    def wait(self, handle: int, timeout_ms: int) -> bool:
        return self._k.WaitForSingleObject(handle, timeout_ms) == WAIT_OBJECT_0

    def close(self, handle: int) -> None:
        self._k.CloseHandle(handle)
