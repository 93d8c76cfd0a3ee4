"""Windows host portability that can be checked on any host: one engine pipe name everywhere, the
Windows branches of the launcher, CLI and key writing (as if on win32), and no import-time
dependency on either platform. Tests that need a real Windows host are marked `windows`."""

from __future__ import annotations

import ast
import importlib
import logging
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import app
import hypervisor
from app import cli, dockerctx
from app.tray import status_text
from hypervisor import forward_windows, keys, launcher, process
from hypervisor import platform as hplatform
from hypervisor.control import PipeStream, is_pipe
from hypervisor.errors import ForwardError, SettingsError
from hypervisor.paths import PIPE_PREFIX, Paths, npipe_url, pipe_name
from hypervisor.platform import WindowsPlatform

ROOT = Path(__file__).resolve().parents[2]
ENGINE_PIPE = r"\\.\pipe\pinnace-dev"
ENGINE_URL = "npipe:////./pipe/pinnace-dev"
WINDOWS_ONLY = {"msvcrt", "winreg", "_winapi", "_overlapped", "winsound", "nt", "win32api", "win32file",
                "win32pipe", "pywintypes", "pythoncom", "wmi"}
POSIX_ONLY = {"fcntl", "pwd", "grp", "termios", "tty", "pty", "resource", "posix", "syslog", "crypt", "spwd"}


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths.for_instance("dev", {"PINNACE_HOME": str(tmp_path)})


@pytest.fixture
def acls() -> list[tuple[str, bool]]:
    """The owner-only ACLs a faked Windows platform was asked to set: (path, inherit)."""
    return []


@pytest.fixture
def as_windows(monkeypatch: pytest.MonkeyPatch, acls: list[tuple[str, bool]]) -> WindowsPlatform:
    """This process on "Windows": the platform strategy swapped, ACLs recorded instead of set."""
    fake = WindowsPlatform(set_acl=lambda path, inherit=False: acls.append((path, inherit)))
    monkeypatch.setattr(hplatform, "current", lambda: fake)
    return fake


# --- one engine pipe name ------------------------------------------------------------------------


def test_engine_pipe_is_one_name_everywhere(paths: Paths) -> None:
    assert PIPE_PREFIX == "\\\\.\\pipe\\"
    assert paths.named_pipe("docker") == pipe_name("dev", "docker") == ENGINE_PIPE
    windows = hplatform.for_os("windows")
    assert windows.engine_endpoint(paths) == ENGINE_PIPE  # what the agent's NamedPipeForwarder serves
    assert windows.control_endpoint(paths) == paths.named_pipe("control")
    assert windows.docker_host(paths) == ENGINE_URL
    assert launcher.engine_address(paths, "windows") == ENGINE_PIPE and is_pipe(ENGINE_PIPE)
    assert launcher.engine_address(paths, "linux") == paths.docker_socket
    assert launcher.docker_host(paths, "windows") == npipe_url(ENGINE_PIPE) == ENGINE_URL
    argv = dockerctx.context_argv("docker", "pinnace-dev", launcher.docker_host(paths, "windows"), exists=False)
    assert argv[-2:] == ["--docker", f"host={ENGINE_URL}"]
    # the tray's "copy DOCKER_HOST" builds it from the agent's status.docker_socket (= the pipe name)
    assert status_text.docker_host(paths.named_pipe("docker"), "windows") == ENGINE_URL
    assert paths.named_pipe("control") == r"\\.\pipe\pinnace-dev-control" != ENGINE_PIPE


def test_pipe_names_refuse_what_is_not_an_instance() -> None:
    for bad in ("", "Dev", "a\\b", "../x", "a b"):
        with pytest.raises(SettingsError):
            pipe_name(bad, "docker")
    with pytest.raises(ValueError):
        pipe_name("dev", "engine")
    with pytest.raises(ValueError):
        npipe_url("/run/docker.sock")


def test_pinnace_env_prints_the_pipe_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str],
                                                as_windows: WindowsPlatform) -> None:
    monkeypatch.setenv("PINNACE_HOME", str(tmp_path))
    monkeypatch.setattr(launcher, "host_os", lambda: "windows", raising=False)  # until it asks the platform
    assert cli.main(["--name", "dev", "env", "--shell", "powershell"]) == 0
    assert capsys.readouterr().out == f'$Env:DOCKER_HOST = "{ENGINE_URL}"\n'


def test_env_defaults_to_powershell_on_windows() -> None:
    assert dockerctx.default_shell("win32") == "powershell"
    assert dockerctx.default_shell("linux") == dockerctx.default_shell("darwin") == "sh"
    assert cli.build_parser().parse_args(["env"]).shell == dockerctx.default_shell()


# --- the launcher starts a detached agent that opens no window -----------------------------------


def test_agent_python_prefers_the_console_interpreter() -> None:
    def exists(path: str) -> bool:
        return True

    assert launcher.agent_python("C:\\Py\\pythonw.exe", "win32", exists) == "C:\\Py\\python.exe"
    assert launcher.agent_python("C:\\venv\\Scripts\\PYTHONW.EXE", "win32", exists) == "C:\\venv\\Scripts\\python.exe"
    assert launcher.agent_python("C:\\Py\\pythonw.exe", "win32", lambda p: False) == "C:\\Py\\pythonw.exe"
    assert launcher.agent_python("C:\\Py\\python.exe", "win32", exists) == "C:\\Py\\python.exe"
    assert launcher.agent_python("/opt/pythonw.exe", "linux", exists) == "/opt/pythonw.exe"
    # the frozen Windows build: the windowed tray starts the agent through its console twin
    apps = "C:\\Users\\a b\\AppData\\Local\\Programs\\Pinnace\\"
    assert launcher.agent_python(apps + "pinnace-tray.exe", "win32", exists) == apps + "pinnace.exe"
    assert launcher.agent_python(apps + "pinnace.exe", "win32", exists) == apps + "pinnace.exe"


def test_spawn_agent_uses_the_detach_flags(paths: Paths, monkeypatch: pytest.MonkeyPatch,
                                           acls: list[tuple[str, bool]]) -> None:
    seen: list[dict] = []

    class FakePopen:
        pid = 4242

        def __init__(self, argv: list[str], **kwargs: object) -> None:
            seen.append({"argv": argv, **kwargs})

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    launcher.spawn_agent(paths)
    assert seen[-1]["start_new_session"] is True and "creationflags" not in seen[-1]
    assert seen[-1]["argv"][1:] == ["-m", "hypervisor.agent", "--name", "dev"]
    monkeypatch.setattr(hplatform, "current", lambda: WindowsPlatform(set_acl=lambda p, i=False: acls.append((p, i))))
    launcher.spawn_agent(paths)
    assert seen[-1]["creationflags"] == 0x00000200 | 0x08000000 and seen[-1]["close_fds"] is True
    assert "start_new_session" not in seen[-1]
    assert paths.agent_pidfile.read_text() == "4242"


# --- the CLI's Windows guards --------------------------------------------------------------------


def test_disk_bytes_without_st_blocks() -> None:
    class WinStat:
        st_size = 5 * 1024

    class PosixStat(WinStat):
        st_blocks = 2

    assert cli.disk_bytes(WinStat()) == 5 * 1024  # type: ignore[arg-type]
    assert cli.disk_bytes(PosixStat()) == 1024  # type: ignore[arg-type]


def test_reset_summary_reads_the_engine_over_its_pipe(monkeypatch: pytest.MonkeyPatch, paths: Paths) -> None:
    class FakePipe:
        sent = b""

        def __init__(self) -> None:
            self.replies = [b'HTTP/1.0 200 OK\r\n\r\n{"Containers": [{}]}', b""]

        def sendall(self, data: bytes) -> None:
            FakePipe.sent += data

        def recv(self, size: int) -> bytes:
            return self.replies.pop(0)

        def close(self) -> None:
            pass

    opened: list[str] = []

    def connect(cls: type, name: str, timeout: float) -> FakePipe:
        opened.append(name)
        return FakePipe()

    monkeypatch.setattr(PipeStream, "connect", classmethod(connect))

    def no_unix(*_args: object) -> None:
        raise AssertionError("no AF_UNIX on Windows")

    monkeypatch.setattr(cli.engine, "unix_get", no_unix)
    from hypervisor.control import Status

    status = Status(instance="dev", state="running", docker_socket=paths.named_pipe("docker"))
    lines = cli.reset_summary(paths, status)
    assert opened == [ENGINE_PIPE] and FakePipe.sent.startswith(b"GET /system/df HTTP/1.0\r\n")
    assert lines[0].startswith("  1 containers, 0 images, 0 volumes")


# --- private keys without fchmod: an owner-only ACL ----------------------------------------------


def test_owner_only_sddl_for_files_and_directories() -> None:
    sid = "S-1-5-21-1004336348-1177238915-682003330-1001"
    assert forward_windows.owner_only_sddl(sid) == f"D:P(A;;GA;;;{sid})"
    assert forward_windows.owner_only_sddl(sid, inherit=True) == f"D:P(A;OICI;GA;;;{sid})"


@pytest.fixture
def keys_as_windows(monkeypatch: pytest.MonkeyPatch, as_windows: WindowsPlatform,
                    acls: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """keys.py on "Windows": no os.fchmod (Python 3.11 on Windows has none), ACLs recorded."""

    def no_chmod(*_args: object) -> None:
        raise AssertionError("chmod only toggles read-only on Windows")

    monkeypatch.delattr(os, "fchmod")
    monkeypatch.setattr(os, "chmod", no_chmod)
    return acls


def test_keys_get_owner_only_acls_on_windows(keys_as_windows: list[tuple[str, bool]], tmp_path: Path) -> None:
    made = keys.ensure_instance_keys(tmp_path / "keys", "dev")
    directory = tmp_path / "keys" / "dev"
    assert keys_as_windows[0] == (str(directory), True)  # the directory passes it on to new files
    private = [Path(p) for p, inherit in keys_as_windows[1:] if not inherit]
    assert len(private) == 2 and all(p.parent == directory and p.name.endswith(".tmp") for p in private)
    assert {p.name.split(".")[1] for p in private} == {keys.CLIENT_KEY_NAME, keys.HOST_KEY_NAME}
    assert made.client_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    keys_as_windows.clear()
    again = keys.ensure_instance_keys(tmp_path / "keys", "dev")  # existing keys are re-restricted
    assert again.client_public == made.client_public
    assert keys_as_windows == [(str(directory), True), (str(made.client_key), False), (str(made.host_key), False)]


def test_keys_survive_a_failing_acl_on_windows(keys_as_windows: list[tuple[str, bool]], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    def denied(path: str, inherit: bool = False) -> None:
        raise PermissionError(5, "Access is denied")

    monkeypatch.setattr(hplatform, "current", lambda: WindowsPlatform(set_acl=denied))
    caplog.set_level(logging.WARNING, logger="hypervisor.platform")
    made = keys.ensure_instance_keys(tmp_path / "keys", "dev")
    assert made.host_key.exists() and "cannot restrict" in caplog.text


# --- no import-time dependency on either platform ------------------------------------------------


def _module_names() -> list[str]:
    names = []
    for package in (hypervisor, app):
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return names


def test_every_module_imports_here() -> None:
    names = _module_names()
    assert {"hypervisor.process", "hypervisor.forward_windows", "app.cli", "app.tray.tray"} <= set(names)
    for name in names:
        if not name.endswith(".__main__"):  # running a program is not importing it
            importlib.import_module(name)


def _import_time_imports(tree: ast.Module) -> set[str]:
    """Top-level modules imported when the module loads: not inside a def (calls happen later),
    nor under an `if`/`try` at module level (those are the platform guards)."""
    found: set[str] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ClassDef):
            todo += node.body
    return found


def test_no_platform_only_module_is_imported_at_import_time() -> None:
    offenders = {}
    for package in ("hypervisor", "app"):
        for source in sorted((ROOT / package).rglob("*.py")):
            bad = _import_time_imports(ast.parse(source.read_text(), str(source))) & (WINDOWS_ONLY | POSIX_ONLY)
            if bad:
                offenders[str(source.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"guard these imports inside the platform's branch: {offenders}"


def test_forward_windows_imports_on_this_host_without_windows_modules() -> None:
    code = ("import sys, hypervisor.forward_windows as fw; "
            "bad = [m for m in ('_winapi', 'msvcrt', '_overlapped', 'winreg') if m in sys.modules]; "
            "print(fw.owner_only_sddl('S-1-5-18'), bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[0] == "D:P(A;;GA;;;S-1-5-18)"


@pytest.mark.skipif(sys.platform == "win32", reason="the non-Windows refusal")
def test_named_pipe_forwarder_refuses_to_start_here() -> None:
    with pytest.raises(ForwardError, match="only available on Windows"):
        forward_windows.NamedPipeForwarder(ENGINE_PIPE, lambda: None).start()


# --- on a real Windows host -----------------------------------------------------------------------


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="needs Windows: DACLs via advapi32 and icacls")
def test_owner_only_acl_on_a_real_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"x")
    hplatform.windows.set_owner_only_acl(str(target))
    listing = subprocess.run(["icacls", str(target)], capture_output=True, text=True, check=True,
                             **process.no_window_options()).stdout
    grants = [line for line in listing.splitlines()[:-2] if ":(" in line]  # the last lines are a summary
    assert len(grants) == 1 and "(I)" not in grants[0], listing  # one ACE, nothing inherited
    assert "(F)" in grants[0] or "(GA)" in grants[0], listing
    assert target.read_bytes() == b"x"  # still ours to read


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="needs Windows: real key files and ACLs")
def test_instance_keys_on_windows(tmp_path: Path) -> None:
    made = keys.ensure_instance_keys(tmp_path / "keys", "dev")
    assert keys.public_line(made.client_key, "pinnace-dev") == made.client_public
    assert keys.ensure_instance_keys(tmp_path / "keys", "dev").host_public == made.host_public


def test_qmp_listens_on_a_unix_socket_or_a_windows_pipe_never_tcp(tmp_path: Path) -> None:
    from hypervisor.monitor import NamedPipeAddress
    from hypervisor.spec import qmp_argv, qmp_option

    assert qmp_option(tmp_path / "qmp.sock") == f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off"
    assert qmp_argv(tmp_path / "qmp.sock") == ["-qmp", f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off"]
    assert qmp_argv(NamedPipeAddress(pipe_name("dev", "qmp"))) == [
        "-chardev", "pipe,id=qmp,path=pinnace-dev-qmp", "-mon", "chardev=qmp,mode=control"]
    with pytest.raises(TypeError):
        qmp_option(("127.0.0.1", 40123))  # type: ignore[arg-type]  # loopback TCP is gone for good


def test_agent_qmp_address_per_os(tmp_path: Path, acls: list[tuple[str, bool]]) -> None:
    from hypervisor.agent.qemu_driver import QemuDriver
    from hypervisor.agent.status_board import StatusBoard
    from hypervisor.control import Status
    from hypervisor.monitor import NamedPipeAddress

    paths = Paths.for_instance("qmpt", {"PINNACE_HOME": str(tmp_path)})
    paths.ensure_dirs()
    board = StatusBoard(Status(instance="qmpt"), paths.state_file)
    linux = QemuDriver(paths, board, hplatform.for_os("linux"))
    assert linux.qmp_address(fresh=True) == linux.qmp_address(fresh=False) == paths.qmp_socket
    windows = QemuDriver(paths, board, WindowsPlatform(set_acl=lambda p, i=False: acls.append((p, i))))
    # QEMU creates the pipe, so QEMU's argv names no server; connecting names the QEMU we expect.
    assert windows.qmp_address(fresh=True) == NamedPipeAddress(r"\\.\pipe\pinnace-qmpt-qmp")
    windows.pid = 4242
    assert windows.qmp_address(fresh=False) == NamedPipeAddress(r"\\.\pipe\pinnace-qmpt-qmp", server_pid=4242)
    assert not list(paths.data_dir.glob("qmp.port")) and not list(paths.runtime_dir.glob("qmp.port"))
