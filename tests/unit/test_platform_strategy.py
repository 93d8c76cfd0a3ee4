"""hypervisor.platform: one strategy per host OS, chosen once; each one exercised here on any host
(the Windows one over fakes of kernel32 and the ACL call)."""

from __future__ import annotations

import ast
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hypervisor import hostinfo, launcher, paths, process
from hypervisor import platform as hplatform
from hypervisor.forward import UnixSocketForwarder
from hypervisor.paths import Paths
from hypervisor.platform import MacPlatform, NotPrivateError, PosixPlatform, WindowsPlatform, for_os

ROOT = Path(__file__).resolve().parents[2]
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and owners")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def instance(tmp_path: Path) -> Paths:
    return Paths.for_instance("dev", {"PINNACE_HOME": str(tmp_path / "home")})


@pytest.fixture
def acls() -> list[tuple[str, bool]]:
    return []


@pytest.fixture
def windows(acls: list[tuple[str, bool]]) -> WindowsPlatform:
    return WindowsPlatform(set_acl=lambda path, inherit=False: acls.append((path, inherit)))


# --- choosing one ----------------------------------------------------------------------------------


def test_current_is_chosen_once_from_this_host() -> None:
    assert hplatform.current() is hplatform.current()
    assert hplatform.current().os_name == hostinfo.host_os() == hplatform.normalise_os(sys.platform)


@pytest.mark.parametrize(("name", "kind", "os_name"), [
    ("linux", PosixPlatform, "linux"), ("linux2", PosixPlatform, "linux"), ("darwin", MacPlatform, "darwin"),
    ("win32", WindowsPlatform, "windows"), ("cygwin", WindowsPlatform, "windows"),
    ("windows", WindowsPlatform, "windows"), ("freebsd14", PosixPlatform, "freebsd14"),
])
def test_for_os_accepts_sys_platform_values_and_os_names(name: str, kind: type, os_name: str) -> None:
    plat = for_os(name)
    assert type(plat) is kind and plat.os_name == os_name
    assert hostinfo.host_os(name) == os_name


def test_the_platforms_differ_only_where_they_do() -> None:
    linux, mac, bsd, win = for_os("linux"), for_os("darwin"), for_os("freebsd14"), for_os("windows")
    assert (linux.unix_path_max, mac.unix_path_max, bsd.unix_path_max, win.unix_path_max) == (108, 104, 104, 108)
    assert [p.has_runtime_dir for p in (linux, mac, bsd, win)] == [True, False, False, False]
    assert [p.windows for p in (linux, mac, bsd, win)] == [False, False, False, True]
    assert [p.named_pipes for p in (linux, mac, win)] == [False, False, True]
    assert [p.qmp_over_unix_socket for p in (linux, mac, win)] == [True, True, False]
    assert isinstance(mac, PosixPlatform) and not mac.proc_fs and linux.proc_fs
    for name in ("linux", "darwin", "freebsd14", "win32"):
        assert paths.unix_path_max(name) == for_os(name).unix_path_max
    assert linux.executable("/usr/bin", "qemu-img") == Path("/usr/bin/qemu-img")
    assert str(win.executable("C:\\Program Files\\qemu", "qemu-img")) == "C:\\Program Files\\qemu\\qemu-img.exe"


def test_nothing_else_in_hypervisor_reads_the_os() -> None:
    """sys.platform and os.name are read in hypervisor/platform/ only."""
    offenders = []
    for source in sorted((ROOT / "hypervisor").rglob("*.py")):
        if source.is_relative_to(ROOT / "hypervisor" / "platform"):
            continue
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and (node.value.id, node.attr) in (("sys", "platform"), ("os", "name"))):
                offenders.append(f"{source.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"ask hypervisor.platform.current() instead: {offenders}"


# --- processes -------------------------------------------------------------------------------------


def test_spawn_and_window_options_per_platform() -> None:
    for name in ("linux", "darwin"):
        assert for_os(name).spawn_options() == {"start_new_session": True, "close_fds": True}
        assert for_os(name).no_window_options() == {}
        assert process.spawn_options(name) == for_os(name).spawn_options()
    assert for_os("windows").spawn_options() == {"creationflags": 0x08000200, "close_fds": True}
    assert for_os("windows").no_window_options() == {"creationflags": 0x08000000}
    assert process.spawn_options() == hplatform.current().spawn_options()
    assert process.is_windows("win32") and not process.is_windows("linux")


def test_alive_refuses_what_is_no_pid() -> None:
    for plat in (for_os("linux"), for_os("darwin"), for_os("windows")):
        assert not plat.alive(None) and not plat.alive(0) and not plat.alive(-3)
    assert hplatform.current().alive(os.getpid()) and process.alive(os.getpid())


def test_wait_exit_gives_up_on_a_live_process() -> None:
    assert not hplatform.current().wait_exit(os.getpid(), 0.1)
    assert process.wait_exit(2**22 + 12345, 0.1)  # above Linux's pid_max: never alive


def test_mac_reads_command_lines_through_ps(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.update(kwargs, argv=argv)
        return subprocess.CompletedProcess(argv, 0, "qemu -name pinnace-dev,process=pinnace-dev\n", "")

    monkeypatch.setattr(subprocess, "run", run)
    assert "process=pinnace-dev" in for_os("darwin").command_line(42)
    assert seen["argv"] == ["ps", "-p", "42", "-o", "command="] and seen["timeout"] == 5.0
    assert "creationflags" not in seen


def test_command_line_is_empty_when_it_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise subprocess.TimeoutExpired("ps", 5)

    monkeypatch.setattr(subprocess, "run", broken)
    assert for_os("darwin").command_line(42) == ""
    assert for_os("darwin").command_line(-1) == ""  # refused before anything runs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_linux_reads_its_own_command_line_and_memory() -> None:
    linux = for_os("linux")
    assert "pytest" in linux.command_line(os.getpid()) or sys.executable in linux.command_line(os.getpid())
    assert linux.total_memory_mib() > 0 and hostinfo.total_memory_mib() == linux.total_memory_mib()


def test_mac_memory_comes_from_sysctl(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert argv == ["sysctl", "-n", "hw.memsize"]
        return subprocess.CompletedProcess(argv, 0, f"{16 * 1024**3}\n", "")

    monkeypatch.setattr(subprocess, "run", run)
    assert for_os("darwin").total_memory_mib() == 16384


def test_unknown_memory_is_zero_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    class NoMemory(PosixPlatform):
        def total_memory_mib(self) -> int:
            raise OSError("no /proc")

    monkeypatch.setattr(hplatform, "current", lambda: NoMemory())
    assert hostinfo.total_memory_mib() == 0 and "could not determine host memory" in caplog.text


@posix_only
def test_try_lock_is_exclusive(tmp_path: Path) -> None:
    plat = hplatform.current()
    with open(tmp_path / "agent.lock", "a+") as first, open(tmp_path / "agent.lock", "a+") as second:
        assert plat.try_lock(first)
        assert not plat.try_lock(second)


# --- endpoints -------------------------------------------------------------------------------------


def test_endpoints_are_sockets_or_pipes(instance: Paths) -> None:
    linux, win = for_os("linux"), for_os("windows")
    assert linux.engine_endpoint(instance) == instance.docker_socket
    assert linux.control_endpoint(instance) == instance.control_socket
    assert linux.docker_host(instance) == f"unix://{instance.docker_socket}"
    assert win.engine_endpoint(instance) == r"\\.\pipe\pinnace-dev"
    assert win.control_endpoint(instance) == r"\\.\pipe\pinnace-dev-control"
    assert win.docker_host(instance) == "npipe:////./pipe/pinnace-dev"
    for os_name in ("linux", "darwin", "windows"):  # the launcher's wrappers say the same
        plat = for_os(os_name)
        assert launcher.engine_address(instance, os_name) == plat.engine_endpoint(instance)
        assert launcher.control_address(instance, os_name) == plat.control_endpoint(instance)
        assert launcher.docker_host(instance, os_name) == plat.docker_host(instance)


def test_engine_forwarder_per_platform(instance: Paths) -> None:
    from hypervisor.forward_windows import NamedPipeForwarder

    unix = for_os("linux").engine_forwarder(instance.docker_socket, lambda: None)
    assert isinstance(unix, UnixSocketForwarder) and unix.name == "engine"
    pipe = for_os("windows").engine_forwarder(r"\\.\pipe\pinnace-dev", lambda: None, "test")
    assert isinstance(pipe, NamedPipeForwarder) and (pipe.pipe_name, pipe.name) == (r"\\.\pipe\pinnace-dev", "test")


# --- private files: POSIX ----------------------------------------------------------------------------


@posix_only
def test_private_dir_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o200)  # mkdir(mode=0o700) alone would give 0o500
    try:
        hplatform.current().private_dir(tmp_path / "b")
    finally:
        os.umask(old)
    assert mode(tmp_path / "b") == 0o700


@posix_only
def test_private_dir_tightens_an_existing_one_of_ours_only_when_asked(tmp_path: Path) -> None:
    plat = hplatform.current()
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    plat.private_dir(loose, tighten=False)
    assert mode(loose) == 0o755
    plat.private_dir(loose)
    assert mode(loose) == 0o700


@posix_only
def test_private_dir_refuses_what_it_cannot_make_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plat = hplatform.current()
    sticky = tmp_path / "shared"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with pytest.raises(NotPrivateError, match="sticky"):
        plat.private_dir(sticky)
    assert mode(sticky) == 0o1777
    (tmp_path / "file").write_text("")
    with pytest.raises(NotPrivateError, match="not a directory"):
        plat.private_dir(tmp_path / "file")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    plat.private_dir(link)  # followed where the user may have linked a directory on purpose
    with pytest.raises(NotPrivateError, match="symlink"):
        plat.private_dir(link, refuse_symlink=True)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(NotPrivateError, match="owned by uid"):
        plat.private_dir(tmp_path / "elsewhere")
    assert issubclass(NotPrivateError, OSError)


@posix_only
def test_write_atomic_modes_and_no_leftovers(tmp_path: Path) -> None:
    plat = hplatform.current()
    plat.write_atomic(tmp_path / "secret", b"key", private=True)
    plat.write_atomic(tmp_path / "public", b"pub", private=False)
    assert (mode(tmp_path / "secret"), mode(tmp_path / "public")) == (0o600, 0o644)
    assert (tmp_path / "secret").read_bytes() == b"key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public", "secret"]


def test_write_atomic_leaves_the_old_file_when_it_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "settings.toml"
    target.write_bytes(b"old")

    def no_replace(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        hplatform.current().write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["settings.toml"]


@posix_only
def test_write_private_text_makes_its_directory_and_keeps_newlines(tmp_path: Path) -> None:
    target = tmp_path / "run" / "hostname"
    hplatform.current().write_private_text(target, "pinnace-dev\n")
    assert target.read_bytes() == b"pinnace-dev\n"
    assert mode(target) == 0o600 and mode(target.parent) == 0o700


@posix_only
def test_restrict_tightens_a_loose_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("x")
    key.chmod(0o644)
    hplatform.current().restrict(key)
    assert mode(key) == 0o600


# --- private files: Windows, over a recorded ACL call ---------------------------------------------------


def test_windows_private_dir_sets_an_inherited_owner_only_acl(tmp_path: Path, windows: WindowsPlatform,
                                                               acls: list[tuple[str, bool]]) -> None:
    new = tmp_path / "new" / "keys"
    windows.private_dir(new)
    assert new.is_dir() and acls == [(str(new), True)]
    windows.private_dir(new, tighten=False)  # an existing one is left alone unless asked
    assert acls == [(str(new), True)]
    windows.private_dir(new)  # st_mode says nothing about an ACL: re-restricted
    assert acls == [(str(new), True), (str(new), True)]


def test_windows_private_dir_refuses_symlinks_where_asked(tmp_path: Path, windows: WindowsPlatform,
                                                          acls: list[tuple[str, bool]]) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "target")
    with pytest.raises(NotPrivateError, match="symlink"):
        windows.private_dir(tmp_path / "alias", refuse_symlink=True)
    assert acls == []


def test_windows_private_files(tmp_path: Path, windows: WindowsPlatform, acls: list[tuple[str, bool]],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fchmod")  # Python 3.11 on Windows has none
    windows.write_atomic(tmp_path / "public", b"pub", private=False)
    assert acls == []  # a public file inherits what its directory gives
    windows.write_atomic(tmp_path / "secret", b"key")
    assert len(acls) == 1 and Path(acls[0][0]).name.startswith(".secret.") and acls[0][1] is False
    windows.restrict(tmp_path / "secret")
    assert acls[-1] == (str(tmp_path / "secret"), False)
    assert (tmp_path / "secret").read_bytes() == b"key"


def test_windows_acl_failure_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def denied(path: str, inherit: bool = False) -> None:
        raise PermissionError(5, "Access is denied")

    caplog.set_level(logging.WARNING, logger="hypervisor.platform")
    WindowsPlatform(set_acl=denied).write_private_text(tmp_path / "state.json", "{}")
    assert (tmp_path / "state.json").read_text() == "{}" and "cannot restrict" in caplog.text


def test_owner_only_sddl() -> None:
    sid = "S-1-5-21-1004336348-1177238915-682003330-1001"
    assert hplatform.windows.owner_only_sddl(sid) == f"D:P(A;;GA;;;{sid})"
    assert hplatform.windows.owner_only_sddl(sid, inherit=True) == f"D:P(A;OICI;GA;;;{sid})"
    for bad in ("", "WD", "S-1-5-21;(A;;GA;;;WD)"):
        with pytest.raises(ValueError):
            hplatform.windows.owner_only_sddl(bad)


def test_paths_use_the_current_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        windows: WindowsPlatform, acls: list[tuple[str, bool]]) -> None:
    monkeypatch.setattr(hplatform, "current", lambda: windows)
    instance = Paths.for_instance("dev", {"PINNACE_HOME": str(tmp_path)})
    instance.ensure_dirs()
    assert {Path(p) for p, inherit in acls if inherit} >= set(instance.all_dirs())
