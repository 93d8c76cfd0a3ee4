"""virtiofsd, the host side of a virtiofs share: finding it, its command line (pure), and one
daemon per share that the agent starts before QEMU and ends after it.

Two programs answer to the name. QEMU <= 7.2 shipped a C daemon (/usr/lib/qemu/virtiofsd,
`-o source=...`); Debian 13, Fedora and others ship the Rust one (/usr/libexec/virtiofsd,
`--shared-dir ...`). Both accept `--fd=N`: the agent creates the listening vhost-user socket
itself (0600 in the instance's private 0700 socket dir) and hands it over, so the socket exists
before QEMU connects (no waiting for a file to appear) and the C daemon does not need its
root-only lock directory under /run.

Who may run it: the C daemon must run as root (once QEMU connects it sandboxes itself in new
namespaces and, as a user, dies with "unshare(CLONE_NEWPID | CLONE_NEWNS): Operation not
permitted"), so it is only used when the agent runs as root; the Rust one runs as the host user
with `--sandbox=none`. Either way it
runs as the agent's user, so a file a container's root writes belongs to the host user: as root,
virtiofsd takes the guest's uid for new files (as QEMU's 9p does as root); as a user, the daemon
creates files as itself. The one difference to 9p: an unprivileged daemon cannot create files for
a guest uid other than 0 or the host user's (EPERM), where 9p's `security_model=none` ignores the
failed chown.

Read-only shares are refused twice: the guest mounts them `ro`, and the host enforces it too
(the Rust daemon's `--readonly` where it has it; otherwise, as root, a read-only bind mount of the
folder in a private mount namespace that the daemon then sandboxes itself into). Only a user's
Rust daemon without `--readonly` leaves it to the guest, where a privileged container could
remount it read-write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hypervisor import process
from hypervisor.errors import MachineError
from hypervisor.mounts import GuestShare, socket_name

log = logging.getLogger("pinnace.virtiofsd")

ENV = "PINNACE_VIRTIOFSD"
NAME = "virtiofsd"
# After PATH: the Rust daemon's packaged place (Debian 13+, Fedora, Arch), then QEMU's C one.
SEARCH_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
PROBE_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 3.0
# Printed by both daemons once they wait on the vhost-user socket.
READY_LINE = "Waiting for vhost-user socket connection"
# Guest caching. Our names: "coherent" (the default), and the daemons' own "auto" and "none" (Rust
# calls it "never"), kept for the shares benchmark. What a container reads must be what the host
# wrote, whole, on its next open: "auto" lets the guest keep names and attributes (the file size
# among them) for 1 s, so a file the host had just grown read back cut off at its old length for
# that second. "coherent" keeps auto's page cache for data (re-read at every open, as NFS's
# close-to-open) and shared writable mmap (sqlite's WAL, LMDB...) but caches no attribute or name
# (C daemon: -o timeout=0); the Rust daemon has no timeout option, so there it is --cache=never,
# with --allow-mmap where the daemon has it (>= 1.11; older ones refuse MAP_SHARED: ENODEV).
# The figures behind the choice are in hypervisor/mounts.py.
CACHE = "coherent"
CACHES = ("coherent", "auto", "none")

Which = Callable[[str], "str | None"]
IsFile = Callable[[Path], bool]
Runner = Callable[[list[str]], str]


@dataclass(frozen=True)
class Daemon:
    """A virtiofsd binary and what its --help says it is."""

    path: Path
    flavour: str  # "rust" | "c"
    readonly: bool = False  # has --readonly (Rust >= 1.11)
    allow_mmap: bool = False  # has --allow-mmap (Rust >= 1.11): shared mmap with --cache=never


def candidates(env: Mapping[str, str], which: Which, is_file: IsFile) -> list[Path]:
    """PINNACE_VIRTIOFSD alone if set; else PATH, then SEARCH_PATHS (existing files, no duplicates)."""
    override = env.get(ENV, "").strip()
    if override:
        return [Path(override)]
    found: list[Path] = []
    on_path = which(NAME)
    for path in ([Path(on_path)] if on_path else []) + [Path(p) for p in SEARCH_PATHS]:
        if path not in found and is_file(path):
            found.append(path)
    return found


def parse_help(path: Path, text: str) -> Daemon:
    """Tell the daemons apart by their --help: the Rust one has --shared-dir, the C one -o source."""
    if "--shared-dir" in text:
        return Daemon(path, "rust", readonly="--readonly" in text, allow_mmap="--allow-mmap" in text)
    if "source=" in text or "-o cache=" in text:
        return Daemon(path, "c")
    raise MachineError(f"{path}: does not look like virtiofsd (its --help names neither --shared-dir nor source=)")


def _run_help(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                            stdin=subprocess.DEVNULL, check=False)
    return result.stdout + result.stderr


def probe(path: Path, run: Runner = _run_help) -> Daemon:
    try:
        return parse_help(path, run([str(path), "--help"]))
    except (OSError, subprocess.SubprocessError) as exc:
        raise MachineError(f"{path}: cannot run it", exc) from exc


def problem(daemon: Daemon, euid: int, root_is_mount: bool = True) -> str | None:
    """Why this daemon cannot serve shares for a user with `euid`, or None."""
    if daemon.flavour == "c" and euid != 0:
        return (f"{daemon.path} is QEMU's C virtiofsd, which runs only as root; install the Rust "
                f"virtiofsd (package virtiofsd) or set {ENV} to it")
    if euid == 0 and not root_is_mount:
        # Its namespace sandbox starts with mount("/", MS_REC|MS_SLAVE), which fails (EINVAL) in a
        # chroot whose root is a plain directory: only once QEMU connects, so refuse it up front.
        return f"{daemon.path}: its sandbox needs / to be a mount point, and this runs in a chroot"
    return None


def root_is_mount_point(mountinfo: str) -> bool:
    """Whether / is a mount point of this process, from /proc/self/mountinfo (mount points are
    shown relative to the process root; mounts it cannot reach are left out)."""
    return any(len(fields) > 4 and fields[4] == "/" for fields in (line.split() for line in mountinfo.splitlines()))


def _root_is_mount() -> bool:
    try:
        return root_is_mount_point(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return True  # no /proc (macOS): nothing to tell; virtiofs is Linux-only anyway


def locate(env: Mapping[str, str] | None = None, euid: int | None = None, which: Which = shutil.which,
           is_file: IsFile = Path.is_file, run: Runner = _run_help) -> tuple[Daemon | None, str | None]:
    """(the first usable daemon, None), or (None, why there is none)."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    found = candidates(env, which, is_file)
    if not found:
        return None, f"{NAME} not found on PATH or in {', '.join(SEARCH_PATHS)}"
    reasons = []
    for path in found:
        try:
            daemon = probe(path, run)
        except MachineError as exc:
            reasons.append(str(exc))
            continue
        why = problem(daemon, euid, _root_is_mount())
        if why is None:
            return daemon, None
        reasons.append(why)
    return None, "; ".join(reasons)


# --- command lines (pure) ----------------------------------------------------------------------


def c_option_escape(value: str) -> str:
    """The C daemon splits -o values on ',' and reads '\\' as an escape (libfuse's fuse_opt)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def cache_argv(daemon: Daemon, cache: str = CACHE) -> list[str]:
    """The daemon's caching options for one of CACHES (see CACHE)."""
    if cache not in CACHES:
        raise ValueError(f"unknown virtiofs cache mode {cache!r}")
    if daemon.flavour == "rust":
        if cache == "auto":
            return ["--cache=auto"]
        return ["--cache=never"] + (["--allow-mmap"] if daemon.allow_mmap else [])
    if cache == "coherent":
        return ["-o", "cache=auto", "-o", "timeout=0"]
    return ["-o", f"cache={cache}"]


def shared_mmap_problem(daemon: Daemon, cache: str = CACHE) -> str | None:
    """Why files on this daemon's shares cannot be mapped MAP_SHARED, or None."""
    if cache == "auto" or (daemon.flavour == "c" and cache == "coherent"):
        return None
    if daemon.flavour == "rust" and daemon.allow_mmap:
        return None
    return (f"{daemon.path} without page cache refuses shared writable mmap (sqlite WAL, LMDB); "
            f"the Rust virtiofsd >= 1.11 (--allow-mmap) or 9p keep it")


def daemon_argv(daemon: Daemon, share: GuestShare, fd: int, euid: int, cache: str = CACHE) -> list[str]:
    """The daemon for one share, serving the listening socket `fd` it inherits."""
    path = str(daemon.path)
    if daemon.flavour == "rust":
        argv = [path, f"--fd={fd}", f"--shared-dir={share.path}", *cache_argv(daemon, cache)]
        if euid != 0:
            argv.append("--sandbox=none")  # namespaces need root (or subordinate uid maps)
        if share.read_only and daemon.readonly:
            argv.append("--readonly")
        return argv
    return [path, f"--fd={fd}", "-o", f"source={c_option_escape(share.path)}", *cache_argv(daemon, cache)]


# Bind the folder read-only onto itself in a new mount namespace, then exec the daemon there; its
# own sandbox bind-mounts and pivots into that read-only mount, so writes fail on the host side.
READ_ONLY_WRAPPER = 'mount --bind -- "$1" "$1" && mount -o remount,bind,ro -- "$1" && shift && exec "$@"'


def needs_read_only_wrapper(daemon: Daemon, share: GuestShare, euid: int) -> bool:
    return share.read_only and euid == 0 and not (daemon.flavour == "rust" and daemon.readonly)


def launch_argv(daemon: Daemon, share: GuestShare, fd: int, euid: int, cache: str = CACHE,
                unshare: str = "unshare") -> list[str]:
    """daemon_argv, inside the read-only wrapper where the host must enforce read-only itself."""
    argv = daemon_argv(daemon, share, fd, euid, cache)
    if not needs_read_only_wrapper(daemon, share, euid):
        return argv
    return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", READ_ONLY_WRAPPER, "sh",
            share.path, *argv]


# --- files of one instance ---------------------------------------------------------------------


def pidfile(run_dir: Path, share: GuestShare) -> Path:
    return run_dir / f"virtiofsd-{share.tag}.pid"


def log_file(log_dir: Path, share: GuestShare) -> Path:
    return log_dir / f"virtiofsd-{share.tag}.log"


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or ""."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def write_pidfile(path: Path, pid: int) -> None:
    """`PID START-TIME`: a pid reused by another process after a crash is never taken for ours."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{pid} {start_time(pid)}\n")


def read_pidfile(path: Path) -> tuple[int, str] | None:
    try:
        pid, started = (path.read_text().split() + [""])[:2]
        return int(pid), started
    except (OSError, ValueError):
        return None


def is_ours(pid: int, started: str) -> bool:
    """The live process a pidfile names: same start time, and a virtiofsd (or our wrapper about to
    exec one)."""
    if not process.alive(pid) or not started or start_time(pid) != started:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(os.path.basename(arg) == NAME for arg in argv)


# --- running -----------------------------------------------------------------------------------


@dataclass
class Running:
    share: GuestShare
    proc: subprocess.Popen[bytes]
    log: Path
    log_offset: int


def _listen(path: Path) -> socket.socket:
    """The vhost-user socket, made before the daemon and QEMU exist: 0600, in the instance's 0700
    socket directory (so no one else can reach it between bind and chmod)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(0o600)
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def start(daemon: Daemon, shares: Iterable[GuestShare], socket_dir: Path, run_dir: Path, log_dir: Path,
          euid: int | None = None, cache: str = CACHE) -> list[Running]:
    """One daemon per virtiofs share, each in its own session (it outlives a crashed agent, as
    QEMU does); pidfiles in `run_dir`, stderr appended to a log per share. Waits until each
    one listens; on a failure the ones already started are stopped and MachineError names it."""
    euid = os.geteuid() if euid is None else euid
    started: list[Running] = []
    try:
        for share in shares:
            if share.transport != "virtiofs":
                continue
            sock_path = socket_dir / socket_name(share)
            logf = log_file(log_dir, share)
            logf.parent.mkdir(parents=True, exist_ok=True)
            offset = logf.stat().st_size if logf.exists() else 0
            try:
                listener = _listen(sock_path)
            except OSError as exc:
                raise MachineError(f"cannot listen on {sock_path} for virtiofsd", exc) from exc
            try:
                argv = launch_argv(daemon, share, listener.fileno(), euid, cache)
                log.info("starting virtiofsd for %s: %s", share.path, " ".join(argv))
                with open(logf, "ab") as err:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                            pass_fds=(listener.fileno(),), start_new_session=True)
            except OSError as exc:
                raise MachineError(f"cannot start {daemon.path} for {share.path}", exc) from exc
            finally:
                listener.close()
            write_pidfile(pidfile(run_dir, share), proc.pid)
            started.append(Running(share, proc, logf, offset))
        for running in started:
            wait_ready(running)
    except BaseException:
        stop(run_dir, started, socket_dir=socket_dir)
        raise
    return started


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def wait_ready(running: Running, timeout: float = READY_TIMEOUT_S) -> None:
    """Until the daemon says it waits for QEMU; MachineError (with its last words) if it exits.
    A daemon that never says so is given the benefit of the doubt after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _log_since(running.log, running.log_offset)
        if READY_LINE in text:
            return
        if running.proc.poll() is not None:
            last = [ln for ln in text.splitlines() if ln.strip()]
            raise MachineError(f"virtiofsd for {running.share.path} exited (code {running.proc.returncode})"
                               + (f": {last[-1].strip()}" if last else "") + f" (see {running.log})")
        time.sleep(0.02)
    log.warning("virtiofsd for %s did not report readiness in %.0f s; going on", running.share.path, timeout)


def dead(started: Iterable[Running]) -> list[Running]:
    """The daemons that exited (each one's share is gone from the guest's point of view)."""
    return [r for r in started if r.proc.poll() is not None]


def stop(run_dir: Path, started: Iterable[Running] = (), grace: float = 3.0, socket_dir: Path | None = None) -> None:
    """End every daemon with a pidfile in `run_dir` (an adopting agent did not start them itself),
    reap the ones this process started and remove the sockets in `socket_dir`. Each daemon exits
    by itself once QEMU closes its socket; this is for the rest (QEMU killed, a daemon stuck)."""
    for pf in sorted(run_dir.glob("virtiofsd-*.pid")):
        entry = read_pidfile(pf)
        if entry and is_ours(*entry):
            process.terminate(entry[0], grace)
        pf.unlink(missing_ok=True)
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.proc.wait(timeout=5)
    if socket_dir is not None:
        for sock in socket_dir.glob("vfs*.sock"):
            if sock.is_socket():
                sock.unlink(missing_ok=True)
