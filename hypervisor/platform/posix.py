"""POSIX hosts: Linux is the baseline; macOS and other Unixes differ only where noted.

Differences inside POSIX are attributes (`proc_fs`, `unix_path_max`, `has_runtime_dir`) and one
override (`MacPlatform.total_memory_mib`), never a check of the OS name.
"""

from __future__ import annotations

import os
import posixpath
import signal
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypervisor.platform.base import Endpoint, NotPrivateError, Platform, checked_pid, log, open_no_follow, shown
from hypervisor.platform.path_safety import check_ancestry

if TYPE_CHECKING:
    from hypervisor.paths import Paths

PS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PosixPlatform(Platform):
    """Signals, sessions, unix sockets and modes; Linux unless told otherwise."""

    os_name: str = "linux"
    unix_path_max: int = 108
    has_runtime_dir: bool = True
    proc_fs: bool = True
    """/proc/<pid>/{stat,cmdline}: zombies are seen and command lines are read without `ps`."""

    # --- processes -------------------------------------------------------------------------

    def _alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if self.proc_fs:
            try:  # a zombie is dead for our purposes
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                return state != "Z"
            except (OSError, IndexError):
                return False
        return True

    def terminate(self, pid: int, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self.wait_exit(pid, wait):
                return
        log.warning("process %d survived SIGKILL", pid)

    def spawn_options(self) -> dict[str, Any]:
        """A new session, so the terminal's SIGHUP/SIGINT never reach the child."""
        return {"start_new_session": True, "close_fds": True}

    def no_window_options(self) -> dict[str, Any]:
        return {}  # creationflags is a ValueError on POSIX

    def command_line_argv(self, pid: int, env: Mapping[str, str] | None = None) -> list[str]:
        pid = checked_pid(pid)
        return ["ps", "-p", str(pid), "-o", "command="]

    _command_line_timeout = PS_TIMEOUT_S

    def command_line(self, pid: int) -> str:
        if not self.proc_fs:
            return super().command_line(pid)
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def try_lock(self, handle: Any) -> bool:
        import fcntl

        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def executable(self, directory: str, name: str) -> Path:
        return Path(posixpath.join(directory, name))

    # --- host facts --------------------------------------------------------------------------

    def total_memory_mib(self) -> int:
        if self.proc_fs:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemTotal:"):
                        return int(line.split()[1]) // 1024
            raise ValueError("MemTotal missing from /proc/meminfo")
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // (1024 * 1024)

    # --- endpoints -----------------------------------------------------------------------------

    def engine_endpoint(self, paths: Paths) -> Endpoint:
        return paths.docker_socket

    def control_endpoint(self, paths: Paths) -> Endpoint:
        return paths.control_socket

    def docker_host(self, paths: Paths) -> str:
        return f"unix://{self.engine_endpoint(paths)}"

    def engine_forwarder(self, endpoint: Endpoint, open_channel: Callable[[], Any], name: str = "engine") -> Any:
        from hypervisor.forward import UnixSocketForwarder

        return UnixSocketForwarder(Path(endpoint), open_channel, name)

    # --- private files: modes, the owner checked before tightening, and every parent (StrictModes) --

    def private_dir(self, directory: Path, *, tighten: bool = True, refuse_symlink: bool = False) -> None:
        directory = Path(directory)
        _check_parents(directory, tighten, refuse_symlink)
        _make_parents(directory.parent)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if tighten:
                self._tighten_dir(directory, refuse_symlink)
            return
        os.chmod(directory, 0o700)  # mkdir's mode is filtered through the umask

    def _tighten_dir(self, directory: Path, refuse_symlink: bool) -> None:
        info = os.lstat(directory) if refuse_symlink else os.stat(directory)
        if stat.S_ISLNK(info.st_mode):
            raise NotPrivateError(f"{shown(directory)} is a symlink; refusing to use it as a private directory")
        if not stat.S_ISDIR(info.st_mode):
            raise NotPrivateError(f"{shown(directory)} exists and is not a directory")
        uid = os.getuid()
        if info.st_uid != uid:
            raise NotPrivateError(f"{shown(directory)} is owned by uid {info.st_uid}, not by you (uid {uid})")
        if info.st_mode & stat.S_ISVTX:
            raise NotPrivateError(f"{shown(directory)} is a shared directory (sticky bit); use a private one")
        if info.st_mode & 0o077:
            os.chmod(directory, 0o700)

    def restrict(self, path: Path) -> None:
        """Through a descriptor opened without following a symlink: chmod would follow one someone
        planted at a key's name to whatever file it names."""
        fd = open_no_follow(Path(path), os.O_RDONLY | os.O_NONBLOCK)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    def _restrict_new(self, path: Path, fd: int, private: bool) -> None:
        os.fchmod(fd, 0o600 if private else 0o644)

    def _refuse_planted_link(self, path: Path) -> None:
        if os.path.islink(path):
            raise NotPrivateError(f"{shown(path)} is a symlink; refusing to replace it with a private file")


def _check_parents(directory: Path, tighten: bool, refuse_symlink: bool) -> None:
    """StrictModes for `directory`: every component above it, and it too unless it is about to be
    tightened (then only the symlinks leading to it), or refused if a symlink."""
    if refuse_symlink:
        check_ancestry(directory.parent)
    else:
        check_ancestry(directory, check_self=not tighten)


def _make_parents(directory: Path) -> None:
    """Create the missing directories above a private one as 0700 (whatever the umask), so that
    the next StrictModes check never refuses a group-writable parent Pinnace made itself."""
    missing: list[Path] = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile (another pinnace starting): a later check or mkdir judges it
        os.chmod(new, 0o700)


@dataclass(frozen=True)
class MacPlatform(PosixPlatform):
    """macOS: a 104-byte sun_path, no /proc (`ps` instead), no per-user runtime dir, sysctl memory."""

    os_name: str = "darwin"
    unix_path_max: int = 104
    has_runtime_dir: bool = False
    proc_fs: bool = False

    def total_memory_mib(self) -> int:
        out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5,
                             check=True).stdout
        return int(out.strip()) // (1024 * 1024)


def other_unix(os_name: str) -> PosixPlatform:
    """A Unix Pinnace has no special knowledge of (the BSDs): POSIX without Linux's extras."""
    return PosixPlatform(os_name=os_name, unix_path_max=104, has_runtime_dir=False, proc_fs=False)
