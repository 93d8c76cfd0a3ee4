r"""Windows hosts: kernel32 for processes, named pipes for endpoints, owner-only ACLs for files.

Windows is not POSIX here: `os.kill(pid, 0)` is TerminateProcess, not a probe; there is no
SIGKILL, no `ps`, and chmod only toggles the read-only flag. So processes go through kernel32 via
ctypes, command lines through PowerShell's CIM query, and private files get a protected DACL for
the current user's SID. Everything Win32 is bound only when called (never at import), and the
process and ACL calls are fields, so tests run these branches on any host with fakes.
"""

from __future__ import annotations

import functools
import ntpath
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from hypervisor.platform.base import Endpoint, NotPrivateError, Platform, checked_pid, log

if TYPE_CHECKING:
    from hypervisor.paths import Paths

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

POWERSHELL_TIMEOUT_S = 20.0  # a cold PowerShell start takes seconds
PIPE_PREFIX = "\\\\.\\pipe\\"
_SID_RE = re.compile(r"^S-1(-\d+){1,15}$")


def npipe_url(pipe: str) -> str:
    r"""docker's form of a pipe name: \\.\pipe\x -> npipe:////./pipe/x (DOCKER_HOST, contexts)."""
    if not pipe.startswith(PIPE_PREFIX):
        raise ValueError(f"not a local pipe name: {pipe!r}")
    return "npipe://" + pipe.replace("\\", "/")


@dataclass(frozen=True)
class NamedPipeAddress:
    r"""A local named pipe (\\.\pipe\NAME) as an address to connect to, e.g. QEMU's QMP pipe.

    `server_pid`, when known, is the process that must be serving it: a client checks it before it
    sends a byte, so a pipe of the same name created first by someone else (squatting) is refused.
    """

    name: str
    server_pid: int | None = None

    def __post_init__(self) -> None:
        if not self.name.startswith(PIPE_PREFIX) or not self.short_name or "\\" in self.short_name:
            raise ValueError(f"not a local pipe name: {self.name!r}")

    @property
    def short_name(self) -> str:
        r"""The name without \\.\pipe\ (what QEMU's `-chardev pipe,path=` takes)."""
        return self.name[len(PIPE_PREFIX):]

    def __str__(self) -> str:
        return self.name


def powershell_exe(env: Mapping[str, str] | None = None) -> str:
    r"""Windows PowerShell by absolute path (under %SystemRoot%), not whatever `powershell` the
    current directory or PATH offers."""
    env = os.environ if env is None else env
    root = env.get("SystemRoot") or env.get("SYSTEMROOT") or "C:\\Windows"
    return root.rstrip("\\") + "\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"


# --- processes: kernel32 through ctypes ------------------------------------------------------


class Win32Process(Protocol):
    """The kernel32 calls the process branches make (a fake stands in for it in tests)."""

    def open(self, access: int, pid: int) -> tuple[int | None, int]: ...  # (handle or None, last error)
    def exit_code(self, handle: int) -> int | None: ...
    def terminate(self, handle: int, code: int) -> bool: ...
    def wait(self, handle: int, timeout_ms: int) -> bool: ...
    def close(self, handle: int) -> None: ...


def process_alive(pid: int, api: Win32Process) -> bool:
    """Alive while the exit code reads STILL_ACTIVE; a process we may not query exists all the same
    (as EPERM from kill(pid, 0) on POSIX). Caveat: a process that exited with 259 reads alive."""
    handle, error = api.open(PROCESS_QUERY_LIMITED_INFORMATION, pid)
    if handle is None:
        return error == ERROR_ACCESS_DENIED
    try:
        return api.exit_code(handle) == STILL_ACTIVE
    finally:
        api.close(handle)


def terminate_process(pid: int, timeout: float, api: Win32Process) -> None:
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
def kernel32() -> Win32Process:
    """kernel32 bound once (alive() is polled several times a second); only ever called on Windows."""
    return Kernel32()


class Kernel32:
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


def memory_mib() -> int:
    """Physical memory through GlobalMemoryStatusEx."""
    import ctypes

    class _MemoryStatusEx(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong),
            ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    status = _MemoryStatusEx()
    status.dwLength = ctypes.sizeof(_MemoryStatusEx)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        raise OSError("GlobalMemoryStatusEx failed")
    return int(status.ullTotalPhys) // (1024 * 1024)


def named_pipe_server_pid(handle: int) -> int:
    """The process id serving the server end of a connected pipe (GetNamedPipeServerProcessId)."""
    import ctypes
    from ctypes import wintypes

    k = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    query = k.GetNamedPipeServerProcessId
    query.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.ULONG))
    query.restype = wintypes.BOOL
    pid = wintypes.ULONG()
    if not query(handle, ctypes.byref(pid)):
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    return int(pid.value)


# --- private files: an owner-only DACL --------------------------------------------------------


def owner_only_sddl(sid: str, inherit: bool = False) -> str:
    """A protected DACL granting GENERIC_ALL to exactly one SID (nothing inherited from above,
    nobody else). `inherit` makes a directory pass it on to the files created inside it."""
    if not _SID_RE.match(sid):
        raise ValueError(f"not a SID string: {sid!r}")
    return f"D:P(A;{'OICI' if inherit else ''};GA;;;{sid})"


def current_user_sid() -> str:
    """The SID string of the user owning this process token."""
    import ctypes
    from ctypes import wintypes

    advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    token = wintypes.HANDLE()
    TOKEN_QUERY, TOKEN_USER = 0x0008, 1  # noqa: N806 - Win32 names
    if not advapi32.OpenProcessToken(kernel32.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    try:
        size = wintypes.DWORD()
        advapi32.GetTokenInformation(token, TOKEN_USER, None, 0, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        if not advapi32.GetTokenInformation(token, TOKEN_USER, buf, size, ctypes.byref(size)):
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        psid = ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0]  # TOKEN_USER.User.Sid
        text = wintypes.LPWSTR()
        if not advapi32.ConvertSidToStringSidW(ctypes.c_void_p(psid), ctypes.byref(text)):
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        try:
            return text.value or ""
        finally:
            kernel32.LocalFree(text)
    finally:
        kernel32.CloseHandle(token)


def set_owner_only_acl(path: str, inherit: bool = False) -> None:
    """Replace a file's or directory's DACL by owner_only_sddl(current user): Windows' 0600/0700."""
    import ctypes
    from ctypes import wintypes

    advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    SE_FILE_OBJECT, DACL_SECURITY_INFORMATION = 1, 0x00000004  # noqa: N806 - Win32 names
    PROTECTED_DACL_SECURITY_INFORMATION = 0x80000000  # noqa: N806 - do not inherit the parent's ACEs
    descriptor = ctypes.c_void_p()
    if not advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
        owner_only_sddl(current_user_sid(), inherit), 1, ctypes.byref(descriptor), None
    ):
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    try:
        present, defaulted, dacl = wintypes.BOOL(), wintypes.BOOL(), ctypes.c_void_p()
        if not advapi32.GetSecurityDescriptorDacl(descriptor, ctypes.byref(present), ctypes.byref(dacl),
                                                  ctypes.byref(defaulted)):
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        set_info = advapi32.SetNamedSecurityInfoW
        set_info.argtypes = (wintypes.LPWSTR, ctypes.c_int, wintypes.DWORD, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p)
        set_info.restype = wintypes.DWORD  # the error code itself, not via GetLastError
        error = set_info(str(path), SE_FILE_OBJECT, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                         None, None, dacl, None)
        if error:
            raise ctypes.WinError(error)  # type: ignore[attr-defined]
    finally:
        kernel32.LocalFree(descriptor)


# --- the strategy ------------------------------------------------------------------------------


# --- the end of the session: console control events ------------------------------------------

# What SetConsoleCtrlHandler delivers to a console program (the agent runs in a hidden console):
# Ctrl-C/Break, the console closed, the user logging off, the machine shutting down.
CONSOLE_EVENTS = {0: "CTRL_C_EVENT", 1: "CTRL_BREAK_EVENT", 2: "CTRL_CLOSE_EVENT",
                  5: "CTRL_LOGOFF_EVENT", 6: "CTRL_SHUTDOWN_EVENT"}
# Windows ends the process once the handler returns, and anyway after its own timeout (5 s for a
# closed console, ~20 s at logoff and shutdown): wait for the clean stop up to this long.
CONSOLE_STOP_GRACE_S = 18.0


def console_handler(stop: Callable[[str], None], stopped: Any, grace: float = CONSOLE_STOP_GRACE_S
                    ) -> Callable[[int], bool]:
    """The HandlerRoutine: start the clean stop, hold the process until the VM is down (or
    `grace` passes), then say the event was handled. Unknown events go to the next handler."""

    def handle(event: int) -> bool:
        name = CONSOLE_EVENTS.get(event)
        if name is None:
            return False
        log.info("%s: stopping the VM cleanly", name)
        stop(name)
        stopped.wait(grace)
        return True

    return handle


def install_console_handler(handler: Callable[[int], bool]) -> Any:
    """Register `handler` with kernel32 (Windows only); returns the ctypes callback, which must
    stay referenced for as long as it is registered."""
    import ctypes
    from ctypes import wintypes

    routine = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)(  # type: ignore[attr-defined]
        lambda event: bool(handler(int(event))))
    if not ctypes.windll.kernel32.SetConsoleCtrlHandler(routine, True):  # type: ignore[attr-defined]
        raise OSError(ctypes.get_last_error(), "SetConsoleCtrlHandler failed")  # type: ignore[attr-defined]
    _REGISTERED.append(routine)
    return routine


_REGISTERED: list[Any] = []  # ctypes callbacks kernel32 holds: they must outlive the registration


@dataclass(frozen=True)
class WindowsPlatform(Platform):
    """kernel32, named pipes and ACLs; `process_api` and `set_acl` are what tests replace."""

    os_name: str = "windows"
    unix_path_max: int = 108  # AF_UNIX exists on Windows 10+, with Linux's sun_path size
    has_runtime_dir: bool = False
    process_api: Callable[[], Win32Process] = kernel32
    set_acl: Callable[[str, bool], None] = set_owner_only_acl

    windows: ClassVar[bool] = True
    named_pipes: ClassVar[bool] = True
    qmp_over_unix_socket: ClassVar[bool] = False

    # --- processes -------------------------------------------------------------------------

    def on_session_end(self, loop: Any, stop: Callable[[str], None], stopped: Any) -> bool:
        """Console close, logoff and shutdown events (Windows has no SIGTERM or SIGHUP): the
        handler runs on a system thread, so the stop is handed to the loop."""
        handler = console_handler(lambda name: loop.call_soon_threadsafe(stop, name), stopped)
        try:
            install_console_handler(handler)
        except (OSError, AttributeError) as exc:
            log.warning("cannot follow console close and shutdown events: %s", exc)
            return False
        return True

    def _alive(self, pid: int) -> bool:
        return process_alive(pid, self.process_api())

    def terminate(self, pid: int, grace: float = 3.0) -> None:
        """Straight to TerminateProcess: no signal would make a windowless QEMU shut down (the
        graceful path is QMP, which the agent tries first); waits as long as POSIX would in all."""
        terminate_process(pid, grace + 2.0, self.process_api())

    def spawn_options(self) -> dict[str, Any]:
        """A new process group (no Ctrl+C from the parent's console) with its own hidden console
        (CREATE_NO_WINDOW): closing the terminal does not end the child and no window appears; its
        console children (qemu-img, probes, PowerShell) share that hidden console instead of each
        opening a window, which DETACHED_PROCESS would not give (CREATE_NO_WINDOW is ignored
        together with it)."""
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW, "close_fds": True}

    def no_window_options(self) -> dict[str, Any]:
        """No console window for a helper when the caller has none (the tray runs under pythonw)."""
        return {"creationflags": CREATE_NO_WINDOW}

    def command_line_argv(self, pid: int, env: Mapping[str, str] | None = None) -> list[str]:
        pid = checked_pid(pid)
        script = ("[Console]::OutputEncoding = [Text.Encoding]::UTF8; "
                  f"(Get-CimInstance -ClassName Win32_Process -Filter 'ProcessId={pid}').CommandLine")
        return [powershell_exe(env), "-NoLogo", "-NoProfile", "-NonInteractive", "-Command", script]

    _command_line_encoding = "utf-8"
    _command_line_timeout = POWERSHELL_TIMEOUT_S

    def try_lock(self, handle: Any) -> bool:
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    def executable(self, directory: str, name: str) -> Path:
        return Path(ntpath.join(directory, name + ".exe"))

    # --- host facts --------------------------------------------------------------------------

    def total_memory_mib(self) -> int:
        return memory_mib()

    # --- endpoints: owner-only named pipes -------------------------------------------------------

    def engine_endpoint(self, paths: Paths) -> Endpoint:
        return paths.named_pipe("docker")

    def control_endpoint(self, paths: Paths) -> Endpoint:
        return paths.named_pipe("control")

    def docker_host(self, paths: Paths) -> str:
        return npipe_url(str(self.engine_endpoint(paths)))

    def engine_forwarder(self, endpoint: Endpoint, open_channel: Callable[[], Any], name: str = "engine") -> Any:
        from hypervisor.forward_windows import NamedPipeForwarder

        return NamedPipeForwarder(str(endpoint), open_channel, name)

    # --- private files -------------------------------------------------------------------------

    def private_dir(self, directory: Path, *, tighten: bool = True, refuse_symlink: bool = False) -> None:
        """The owner-only ACL is inherited by what is created inside (OICI). There is no uid to
        compare; an existing directory is re-restricted as a whole."""
        directory = Path(directory)
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            if not tighten:
                return
            if refuse_symlink and directory.is_symlink():
                raise NotPrivateError(
                    f"{directory} is a symlink; refusing to use it as a private directory") from None
            if not directory.is_dir():
                raise NotPrivateError(f"{directory} exists and is not a directory") from None
        self._owner_only(directory, inherit=True)

    def restrict(self, path: Path) -> None:
        self._owner_only(Path(path), inherit=False)  # st_mode says nothing about ACLs: always

    def _restrict_new(self, path: Path, fd: int, private: bool) -> None:
        if private:  # a public file keeps what it inherits from its directory
            self._owner_only(path, inherit=False)

    def _owner_only(self, path: Path, inherit: bool) -> None:
        """Logged, not raised: what fails keeps the ACL it inherited, which under the user's
        profile (the default location) already excludes other users."""
        try:
            self.set_acl(str(path), inherit)
        except OSError as exc:
            log.warning("cannot restrict %s to its owner: %s", path, exc)
