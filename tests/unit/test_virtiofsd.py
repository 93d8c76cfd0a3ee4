"""virtiofsd: discovery, telling the C and Rust daemons apart, their argv, and running them
(with a stand-in daemon: a script that serves the inherited socket like virtiofsd would)."""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from hypervisor import process, virtiofsd
from hypervisor.errors import MachineError
from hypervisor.mounts import GuestShare
from hypervisor.virtiofsd import Daemon

C_HELP = """usage: /usr/lib/qemu/virtiofsd [options]
    -o cache=<mode>            cache mode. could be one of "auto, always, none"
    -o source=PATH             shared directory tree
"""
RUST_HELP = """Launch a virtiofsd backend.
Usage: virtiofsd --shared-dir <SHARED_DIR> --socket-path <SOCKET_PATH> [OPTIONS]
      --shared-dir <SHARED_DIR>  Shared directory path
      --fd <FD>                  File descriptor for the listening (not yet connected) socket
      --sandbox <SANDBOX>        Sandbox mechanism to isolate the daemon process (namespace, chroot, none)
"""
RUST_RO_HELP = RUST_HELP + "      --readonly                 Prevent the guest from making modifications\n"

C = Daemon(Path("/usr/lib/qemu/virtiofsd"), "c")
RUST = Daemon(Path("/usr/libexec/virtiofsd"), "rust")
RUST_RO = Daemon(Path("/usr/libexec/virtiofsd"), "rust", readonly=True)
RW = GuestShare("pinnace0", "/home/ann/a, b\\c", False, "virtiofs")
RO = GuestShare("pinnace1", "/srv/ro", True, "virtiofs")


def test_candidates_order_path_then_rust_then_c() -> None:
    existing = {Path("/usr/libexec/virtiofsd"), Path("/usr/lib/qemu/virtiofsd"), Path("/opt/bin/virtiofsd")}
    found = virtiofsd.candidates({}, lambda _n: "/opt/bin/virtiofsd", existing.__contains__)
    assert found == [Path("/opt/bin/virtiofsd"), Path("/usr/libexec/virtiofsd"), Path("/usr/lib/qemu/virtiofsd")]
    found = virtiofsd.candidates({}, lambda _n: "/usr/lib/qemu/virtiofsd", existing.__contains__)
    assert found == [Path("/usr/lib/qemu/virtiofsd"), Path("/usr/libexec/virtiofsd")]
    assert virtiofsd.candidates({}, lambda _n: None, lambda _p: False) == []


def test_candidates_env_override_is_the_only_one() -> None:
    found = virtiofsd.candidates({"PINNACE_VIRTIOFSD": "/x/vfsd"}, lambda _n: "/usr/bin/virtiofsd", lambda _p: True)
    assert found == [Path("/x/vfsd")]


def test_parse_help_tells_the_daemons_apart() -> None:
    assert virtiofsd.parse_help(C.path, C_HELP) == C
    assert virtiofsd.parse_help(RUST.path, RUST_HELP) == RUST
    assert virtiofsd.parse_help(RUST.path, RUST_RO_HELP) == RUST_RO
    with pytest.raises(MachineError, match="does not look like virtiofsd"):
        virtiofsd.parse_help(Path("/bin/true"), "")


def test_the_c_daemon_needs_root() -> None:
    assert virtiofsd.problem(C, 0) is None
    assert "runs only as root" in virtiofsd.problem(C, 1000)
    assert virtiofsd.problem(RUST, 1000) is None and virtiofsd.problem(RUST, 0) is None


def test_locate_takes_the_first_usable_one() -> None:
    helps = {"/usr/lib/qemu/virtiofsd": C_HELP, "/usr/libexec/virtiofsd": RUST_HELP}
    existing = {Path(p) for p in helps}

    def run(argv: list[str]) -> str:
        return helps[argv[0]]

    def which(_name: str) -> str:
        return "/usr/lib/qemu/virtiofsd"

    # as a user: the C daemon on PATH is skipped for the Rust one
    daemon, why = virtiofsd.locate({}, 1000, which, existing.__contains__, run)
    assert daemon == RUST and why is None
    # as root: the first one found (PATH) serves
    daemon, why = virtiofsd.locate({}, 0, which, existing.__contains__, run)
    assert daemon == C and why is None
    # only the C daemon, as a user: none, and why
    daemon, why = virtiofsd.locate({}, 1000, which, {C.path}.__contains__, run)
    assert daemon is None and "runs only as root" in why
    daemon, why = virtiofsd.locate({}, 0, lambda _n: None, lambda _p: False, run)
    assert daemon is None and "not found" in why


def test_locate_reports_a_binary_that_cannot_run() -> None:
    def run(_argv: list[str]) -> str:
        raise OSError("exec format error")

    daemon, why = virtiofsd.locate({"PINNACE_VIRTIOFSD": "/x/vfsd"}, 0, lambda _n: None, lambda _p: True, run)
    assert daemon is None and "/x/vfsd: cannot run it" in why


def test_c_daemon_argv_escapes_option_separators() -> None:
    assert virtiofsd.daemon_argv(C, RW, 7, 0) == [
        "/usr/lib/qemu/virtiofsd", "--fd=7", "-o", "source=/home/ann/a\\, b\\\\c",
        "-o", "cache=auto", "-o", "timeout=0"]
    assert virtiofsd.daemon_argv(C, RW, 7, 0, cache="none")[-2:] == ["-o", "cache=none"]
    assert virtiofsd.daemon_argv(C, RW, 7, 0, cache="auto")[-2:] == ["-o", "cache=auto"]
    assert virtiofsd.c_option_escape("a,b\\,c") == "a\\,b\\\\\\,c"


def test_rust_daemon_argv_as_root_and_as_a_user() -> None:
    assert virtiofsd.daemon_argv(RUST, RW, 5, 0) == [
        "/usr/libexec/virtiofsd", "--fd=5", "--shared-dir=/home/ann/a, b\\c", "--cache=never"]
    assert virtiofsd.daemon_argv(RUST, RW, 5, 1000)[-1] == "--sandbox=none"
    assert virtiofsd.daemon_argv(RUST, RW, 5, 0, cache="none")[3] == "--cache=never"  # Rust's name for it
    assert virtiofsd.daemon_argv(RUST, RW, 5, 0, cache="auto")[3] == "--cache=auto"
    assert virtiofsd.daemon_argv(RUST_RO, RO, 5, 1000)[-2:] == ["--sandbox=none", "--readonly"]
    assert "--readonly" not in virtiofsd.daemon_argv(RUST, RO, 5, 1000)  # too old to have it


def test_coherent_caching_keeps_no_attribute_and_keeps_shared_mmap_where_it_can() -> None:
    # The C daemon keeps auto's page cache (shared mmap works) and caches no attribute or name.
    assert virtiofsd.cache_argv(C) == ["-o", "cache=auto", "-o", "timeout=0"]
    assert virtiofsd.shared_mmap_problem(C) is None
    # The Rust daemon has no timeout option: never, with --allow-mmap where it has it.
    mmap_rust = virtiofsd.parse_help(Path("/v"), RUST_HELP + "      --allow-mmap   Allow mmap\n")
    assert mmap_rust.allow_mmap
    assert virtiofsd.cache_argv(mmap_rust) == ["--cache=never", "--allow-mmap"]
    assert virtiofsd.shared_mmap_problem(mmap_rust) is None
    assert virtiofsd.cache_argv(RUST) == ["--cache=never"]
    assert "refuses shared writable mmap" in virtiofsd.shared_mmap_problem(RUST)
    # the daemons' own modes, for the benchmark
    assert virtiofsd.shared_mmap_problem(C, "none") is not None
    assert virtiofsd.shared_mmap_problem(RUST, "auto") is None
    with pytest.raises(ValueError, match="unknown virtiofs cache mode"):
        virtiofsd.cache_argv(C, "always")


def test_read_only_shares_are_enforced_on_the_host() -> None:
    # the C daemon has no read-only option: a read-only bind mount in a private mount namespace
    argv = virtiofsd.launch_argv(C, RO, 3, 0)
    assert argv[:8] == ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                        virtiofsd.READ_ONLY_WRAPPER]
    assert argv[8:10] == ["sh", "/srv/ro"]
    assert argv[10:] == virtiofsd.daemon_argv(C, RO, 3, 0)
    assert "remount,bind,ro" in virtiofsd.READ_ONLY_WRAPPER and 'exec "$@"' in virtiofsd.READ_ONLY_WRAPPER
    # the Rust daemon's own --readonly needs no wrapper; read-write shares never get one
    assert virtiofsd.launch_argv(RUST_RO, RO, 3, 0) == virtiofsd.daemon_argv(RUST_RO, RO, 3, 0)
    assert virtiofsd.launch_argv(C, RW, 3, 0) == virtiofsd.daemon_argv(C, RW, 3, 0)
    # an old Rust daemon as root: wrapped too
    assert virtiofsd.launch_argv(RUST, RO, 3, 0)[0] == "unshare"


# --- running (a stand-in daemon) ----------------------------------------------------------------

FAKE = r"""
import os, socket, sys, time
fd = int(next(a for a in sys.argv if a.startswith("--fd=")).split("=", 1)[1])
if os.environ.get("FAKE_FAIL"):
    print("fuse: bad mount point `/nope': No such file or directory", file=sys.stderr, flush=True)
    sys.exit(1)
listener = socket.socket(fileno=fd)
print("virtio_session_mount: Waiting for vhost-user socket connection...", file=sys.stderr, flush=True)
conn, _ = listener.accept()
conn.sendall(b"hello from " + os.path.basename(sys.argv[0]).encode())
time.sleep(60)
"""


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Daemon:
    script = tmp_path / "virtiofsd"  # the name is what is_ours checks
    script.write_text(f"#!{sys.executable}\n{FAKE}")
    script.chmod(0o755)
    return Daemon(script, "c")


@pytest.mark.skipif(sys.platform != "linux", reason="virtiofsd is Linux-only")
def test_start_serves_a_private_socket_and_stop_ends_it(tmp_path: Path, fake_daemon: Daemon) -> None:
    run, logs, socks = tmp_path / "run", tmp_path / "logs", tmp_path / "s"
    for d in (run, logs, socks):
        d.mkdir()
    shares = [GuestShare("pinnace0", "/a", False, "virtiofs"), GuestShare("pinnace1", "/b"),  # a 9p one: skipped
              GuestShare("pinnace2", "/c", True, "virtiofs")]
    started = virtiofsd.start(fake_daemon, shares, socks, run, logs, euid=1000)
    try:
        assert [r.share.tag for r in started] == ["pinnace0", "pinnace2"]
        for r in started:
            sock = socks / f"vfs{r.share.tag[-1]}.sock"
            assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
            with socket.socket(socket.AF_UNIX) as client:  # what QEMU does
                client.settimeout(10)
                client.connect(str(sock))
                assert client.recv(100) == b"hello from virtiofsd"
            pid, since = virtiofsd.read_pidfile(run / f"virtiofsd-{r.share.tag}.pid")
            assert pid == r.proc.pid and virtiofsd.is_ours(pid, since)
            assert not virtiofsd.is_ours(pid, str(int(since) + 1))  # the pid of a later process
            assert stat.S_IMODE((run / f"virtiofsd-{r.share.tag}.pid").stat().st_mode) == 0o600
            assert "Waiting for vhost-user" in (logs / f"virtiofsd-{r.share.tag}.log").read_text()
        assert virtiofsd.dead(started) == []
    finally:
        virtiofsd.stop(run, started, grace=1.0, socket_dir=socks)
    assert all(r.proc.poll() is not None for r in started)
    assert list(run.glob("*.pid")) == [] and list(socks.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux", reason="virtiofsd is Linux-only")
def test_stop_by_pidfile_ends_daemons_another_agent_started(tmp_path: Path, fake_daemon: Daemon) -> None:
    share = GuestShare("pinnace0", "/a", False, "virtiofs")
    started = virtiofsd.start(fake_daemon, [share], tmp_path, tmp_path, tmp_path, euid=1000)
    pid = started[0].proc.pid
    # stale pidfiles whose pid now belongs to someone else: this test process (its command line
    # even contains "virtiofsd"), with and without a matching start time
    me = os.getpid()
    (tmp_path / "virtiofsd-pinnace8.pid").write_text(f"{me} {virtiofsd.start_time(me)}\n")
    (tmp_path / "virtiofsd-pinnace9.pid").write_text(f"{me}\n")
    assert not virtiofsd.is_ours(me, virtiofsd.start_time(me))
    virtiofsd.stop(tmp_path, grace=1.0)  # as an adopting agent: pidfiles only
    started[0].proc.wait(timeout=5)
    assert not process.alive(pid)
    assert list(tmp_path.glob("*.pid")) == []  # and this test process was left alone


@pytest.mark.skipif(sys.platform != "linux", reason="virtiofsd is Linux-only")
def test_a_daemon_that_exits_at_once_fails_the_start_with_its_words(tmp_path: Path, fake_daemon: Daemon,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    share = GuestShare("pinnace0", "/nope", False, "virtiofs")
    t0 = time.monotonic()
    with pytest.raises(MachineError, match=r"virtiofsd for /nope exited \(code 1\): fuse: bad mount point"):
        virtiofsd.start(fake_daemon, [share], tmp_path, tmp_path, tmp_path, euid=1000)
    assert time.monotonic() - t0 < virtiofsd.READY_TIMEOUT_S
    assert list(tmp_path.glob("*.pid")) == []


@pytest.mark.skipif(sys.platform != "linux", reason="virtiofsd is Linux-only")
def test_start_replaces_a_stale_socket(tmp_path: Path, fake_daemon: Daemon) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "vfs0.sock"))
    stale.close()
    started = virtiofsd.start(fake_daemon, [GuestShare("pinnace0", "/a", False, "virtiofs")], tmp_path, tmp_path,
                              tmp_path, euid=1000)
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(tmp_path / "vfs0.sock"))
            assert client.recv(100).startswith(b"hello")
    finally:
        virtiofsd.stop(tmp_path, started, grace=1.0)


def test_a_chroot_root_rules_out_the_namespace_sandbox() -> None:
    host = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n30 27 0:5 / /dev rw - devtmpfs udev rw\n"
    chroot = "512 490 0:22 / /proc rw,nosuid - proc proc rw\n"  # only what the chroot can reach
    assert virtiofsd.root_is_mount_point(host) is True
    assert virtiofsd.root_is_mount_point(chroot) is False
    c_daemon = virtiofsd.Daemon(Path("/usr/lib/qemu/virtiofsd"), "c")
    assert virtiofsd.problem(c_daemon, 0, root_is_mount=True) is None
    assert "chroot" in (virtiofsd.problem(c_daemon, 0, root_is_mount=False) or "")
