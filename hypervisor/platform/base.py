"""The contract every host platform fulfils, and what all of them share.

Everything that differs between POSIX and Windows (and, inside POSIX, between Linux and macOS)
is a method or an attribute of `Platform`; callers ask `hypervisor.platform.current()` and never
look at `sys.platform` themselves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from hypervisor.paths import Paths

log = logging.getLogger("hypervisor.platform")

Endpoint = Path | str  # a unix socket path, or a Windows pipe name (\\.\pipe\...)


class NotPrivateError(PermissionError):
    """An existing directory cannot be made private: a symlink, someone else's, or shared (sticky).

    An OSError, like the failures of mkdir/chmod it sits next to; callers turn it into their own
    package error with the message unchanged.
    """


O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
"""0 where the OS has no such flag (Windows): there a private file is opened as before."""


def shown(path: Path | str) -> str:
    """`path` for a one-line message: as it is, or quoted when it holds a newline or another
    control character (a name can hold anything but / and NUL)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def open_no_follow(path: Path, flags: int) -> int:
    """os.open that refuses a symlink planted at the last component (O_NOFOLLOW), in one line."""
    try:
        return os.open(path, flags | O_NOFOLLOW)
    except OSError as exc:  # ELOOP on Linux and macOS, EMLINK on FreeBSD: ask the file system instead
        if O_NOFOLLOW and os.path.islink(path):
            raise NotPrivateError(f"{shown(path)} is a symlink; refusing to open a private file through it") from exc
        raise


class Platform(ABC):
    """One host OS: processes, detached spawning, endpoints and private files.

    Instances are immutable and cheap; `current()` picks one per process.
    """

    os_name: str
    """"linux", "darwin", "windows", or another Unix's `sys.platform` (e.g. "freebsd14")."""
    unix_path_max: int
    """Size of `sockaddr_un.sun_path`, including the NUL."""
    has_runtime_dir: bool
    """Whether the OS has a real per-user runtime directory (XDG_RUNTIME_DIR) for sockets."""

    windows: ClassVar[bool] = False
    named_pipes: ClassVar[bool] = False
    """Endpoints (engine, control API) are named pipes rather than unix sockets."""
    qmp_over_unix_socket: ClassVar[bool] = True
    """QEMU's monitor on a unix socket; else on a named pipe QEMU creates (asyncio has no AF_UNIX there)."""

    # --- processes -------------------------------------------------------------------------

    def alive(self, pid: int | None) -> bool:
        """Whether `pid` names a running process (a zombie or an exited one is dead)."""
        if not pid or pid <= 0:
            return False
        return self._alive(pid)

    @abstractmethod
    def _alive(self, pid: int) -> bool: ...

    @abstractmethod
    def terminate(self, pid: int, grace: float = 3.0) -> None:
        """End `pid`, waiting up to about `grace` + 2 s for it to be gone."""

    def wait_exit(self, pid: int, timeout: float) -> bool:
        """Poll until `pid` is gone; False if it still runs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive(pid):
                return True
            time.sleep(0.05)
        return not self.alive(pid)

    @abstractmethod
    def spawn_options(self) -> dict[str, Any]:
        """Popen keywords that detach a long-lived child (QEMU, the agent) from its parent."""

    @abstractmethod
    def no_window_options(self) -> dict[str, Any]:
        """Popen keywords for a short helper command that must not open a console window."""

    @abstractmethod
    def command_line_argv(self, pid: int, env: Mapping[str, str] | None = None) -> list[str]:
        """The command that prints `pid`'s command line (where it cannot be read directly)."""

    def command_line(self, pid: int) -> str:
        """`pid`'s command line as one string, "" when it cannot be read."""
        try:
            argv = self.command_line_argv(pid)
            return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, text=True,
                                  encoding=self._command_line_encoding, errors="replace",
                                  timeout=self._command_line_timeout, **self.no_window_options()).stdout
        except (OSError, ValueError, subprocess.SubprocessError):
            return ""

    _command_line_encoding: ClassVar[str | None] = None
    _command_line_timeout: ClassVar[float] = 5.0

    def on_session_end(self, loop: asyncio.AbstractEventLoop, stop: Callable[[str], None],
                       stopped: threading.Event) -> bool:
        """Have `stop(name)` called on the loop when the user's session ends (a logout, a
        shutdown, Ctrl-C); `stopped` is set once the VM is down, for hosts that wait for it.
        POSIX: SIGTERM, SIGHUP, SIGINT. False where nothing could be hooked."""
        hooked = False
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None), signal.SIGINT):
            if sig is None:
                continue
            try:
                loop.add_signal_handler(sig, stop, sig.name)
                hooked = True
            except (NotImplementedError, RuntimeError, ValueError):
                return hooked
        return hooked

    @abstractmethod
    def try_lock(self, handle: Any) -> bool:
        """Take an exclusive, non-blocking lock on an open file; False if someone else holds it."""

    @abstractmethod
    def executable(self, directory: str, name: str) -> Path:
        """The program `name` in `directory`, spelled for this OS (e.g. qemu-img.exe on Windows)."""

    # --- host facts --------------------------------------------------------------------------

    @abstractmethod
    def total_memory_mib(self) -> int:
        """Physical memory in MiB; raises OSError, ValueError or SubprocessError if unknown."""

    # --- endpoints -----------------------------------------------------------------------------

    @abstractmethod
    def engine_endpoint(self, paths: Paths) -> Endpoint:
        """Where the forwarded Docker Engine listens for this instance."""

    @abstractmethod
    def control_endpoint(self, paths: Paths) -> Endpoint:
        """Where the instance's agent serves its control API."""

    @abstractmethod
    def docker_host(self, paths: Paths) -> str:
        """DOCKER_HOST for the instance's engine endpoint."""

    @abstractmethod
    def engine_forwarder(self, endpoint: Endpoint, open_channel: Callable[[], Any], name: str = "engine") -> Any:
        """A forwarder (start()/stop()) serving `endpoint`, one `open_channel()` per client."""

    # --- private files -------------------------------------------------------------------------

    @abstractmethod
    def private_dir(self, directory: Path, *, tighten: bool = True, refuse_symlink: bool = False) -> None:
        """Create `directory` (and its parents) so that only its owner can use it.

        With `tighten`, an existing directory is checked to be ours (NotPrivateError otherwise)
        and made private too; without it, an existing directory is left as it is (e.g. a parent
        the user chose). `refuse_symlink` is for directories in shared places such as the temp dir.
        """

    @abstractmethod
    def restrict(self, path: Path) -> None:
        """Make an existing file readable by its owner only (a key, a disk image)."""

    @abstractmethod
    def _restrict_new(self, path: Path, fd: int, private: bool) -> None:
        """Set the permissions of a just-created, still empty temp file before data goes in."""

    def _refuse_planted_link(self, path: Path) -> None:  # noqa: B027 - a hook, empty on purpose
        """Hook before a private file is replaced: where planting a symlink is cheap (POSIX), one
        at its name is refused. Nothing here: Windows keeps relying on its ACLs."""

    def read_private(self, path: Path) -> bytes:
        """A private file's bytes (a key), never read through a symlink planted at its name."""
        path = Path(path)
        if not O_NOFOLLOW:
            return path.read_bytes()
        with os.fdopen(open_no_follow(path, os.O_RDONLY), "rb") as f:
            return f.read()

    def write_atomic(self, path: Path, data: bytes, *, private: bool = True) -> None:
        """Write via a temp file + rename, so a crash never leaves a half-written file; with
        `private` the file is owner-only before a byte is written (the rename keeps that).

        The temp file is made with O_EXCL (and O_NOFOLLOW where the OS has it) by mkstemp, and a
        rename replaces a symlink rather than writing through it; a private file's name that is a
        symlink is still refused, since someone meant to plant it."""
        path = Path(path)
        if private:
            self._refuse_planted_link(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            self._restrict_new(Path(tmp), fd, private)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def write_private_text(self, path: Path, text: str) -> None:
        """An owner-only UTF-8 text file (no newline translation), its directory created if need be."""
        path = Path(path)
        self.private_dir(path.parent, tighten=False)
        self.write_atomic(path, text.encode("utf-8"), private=True)


def checked_pid(pid: int) -> int:
    """`pid` as an int > 0: it ends up in a command line, so nothing else gets through."""
    pid = int(pid)
    if pid <= 0:
        raise ValueError(f"not a process id: {pid}")
    return pid
