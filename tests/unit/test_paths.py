"""Pure tests of the per-instance layout; only ensure_dirs touches a tmp dir."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hypervisor.errors import SettingsError
from hypervisor.paths import BaseDirs, Paths, npipe_url, pipe_name, unix_path_max


def fake_base(root: Path, runtime: bool = True) -> BaseDirs:
    return BaseDirs(
        config=root / "cfg",
        data=root / "share",
        state=root / "state",
        log=root / "state" / "log",
        cache=root / "cache",
        runtime=root / "rt" if runtime else None,
    )


def make(tmp_path: Path, name: str = "default", **kw) -> Paths:
    kw.setdefault("base", fake_base(tmp_path))
    kw.setdefault("env", {})
    kw.setdefault("host_os", "linux")
    kw.setdefault("temp_dir", str(tmp_path / "t"))
    kw.setdefault("uid", 1000)
    kw.setdefault("path_max", 108)
    return Paths.for_instance(name, **kw)


def test_platform_layout(tmp_path: Path) -> None:
    p = make(tmp_path, "dev")
    assert p.instance == "dev"
    assert p.config_dir == tmp_path / "cfg" / "instances" / "dev"
    assert p.data_dir == tmp_path / "share" / "instances" / "dev"
    assert p.runtime_dir == tmp_path / "rt" / "dev"
    assert p.log_dir == tmp_path / "state" / "log" / "dev"
    assert p.cache_dir == tmp_path / "cache"
    assert p.image_root == tmp_path / "share" / "images"


@pytest.mark.parametrize("os_name", ["darwin", "windows"])
def test_runtime_falls_back_to_state_dir_without_runtime_dir(tmp_path: Path, os_name: str) -> None:
    p = make(tmp_path, "dev", base=fake_base(tmp_path, runtime=False), host_os=os_name)
    assert p.runtime_dir == tmp_path / "state" / "run" / "dev"


def test_pinnace_home_puts_everything_under_it(tmp_path: Path) -> None:
    home = tmp_path / "ph"
    p = make(tmp_path, "dev", env={"PINNACE_HOME": str(home)})
    assert (p.config_dir, p.data_dir, p.runtime_dir, p.log_dir, p.cache_dir, p.image_root) == (
        home / "config" / "dev",
        home / "data" / "dev",
        home / "run" / "dev",
        home / "logs" / "dev",
        home / "cache",
        home / "images",
    )


def test_relative_pinnace_home_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="PINNACE_HOME"):
        make(tmp_path, env={"PINNACE_HOME": "relative/dir"})


def test_file_properties(tmp_path: Path) -> None:
    p = make(tmp_path)
    assert p.settings_file == p.config_dir / "settings.toml"
    assert p.data_disk == p.data_dir / "data.qcow2"
    assert p.keys_dir == p.data_dir / "keys"
    assert p.control_socket == p.runtime_dir / "agent.sock"
    assert p.docker_socket == p.runtime_dir / "docker.sock"
    # The VM's records survive a wiped runtime dir (a logout): they live with its data.
    assert p.qmp_socket.parent == p.data_dir
    assert p.state_file == p.data_dir / "state.json"
    assert p.shares_record == p.data_dir / "shares.fwcfg"
    assert {p.qemu_pidfile.parent, p.agent_pidfile.parent, p.agent_lock.parent, p.ssh_port_file.parent} == {
        p.data_dir
    }
    assert p.serial_log == p.log_dir / "serial.log"
    assert p.agent_log == p.log_dir / "agent.log"
    assert p.probe_cache == p.cache_dir / "accel-probe.json"


@pytest.mark.parametrize("name", ["", "Default", "-x", "_x", "a" * 33, "a/b", "a b", "..", "ä"])
def test_invalid_instance_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(SettingsError, match="instance name"):
        make(tmp_path, name)


@pytest.mark.parametrize("name", ["default", "a", "dev-2", "x_y", "0" + "a" * 31])
def test_valid_instance_names(tmp_path: Path, name: str) -> None:
    assert make(tmp_path, name).instance == name


def test_construction_creates_nothing(tmp_path: Path) -> None:
    p = make(tmp_path)
    _ = (p.qmp_socket, p.docker_socket, p.control_socket, p.settings_file)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_ensure_dirs_creates_private_dirs_and_tightens_existing(tmp_path: Path) -> None:
    p = make(tmp_path)
    p.config_dir.mkdir(parents=True, mode=0o755)
    os.chmod(p.config_dir, 0o755)
    p.ensure_dirs()
    for d in (p.config_dir, p.data_dir, p.keys_dir, p.runtime_dir, p.log_dir, p.cache_dir, p.image_root):
        assert d.is_dir(), d
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_unix_path_max_per_platform() -> None:
    assert unix_path_max("linux") == 108
    assert unix_path_max("darwin") == 104
    assert unix_path_max("freebsd14") == 104


def test_long_runtime_dir_moves_sockets_to_short_alias(tmp_path: Path) -> None:
    long_root = tmp_path / ("x" * 120)
    p = make(tmp_path, base=fake_base(long_root))
    alias = p.qmp_socket.parent
    assert alias.parent == tmp_path / "t" / "pinnace-1000"
    assert len(alias.name) == 12
    assert {p.qmp_socket.parent, p.control_socket.parent, p.docker_socket.parent} == {alias}
    assert p.docker_socket.name == "docker.sock"
    # deterministic per runtime dir, different for another instance
    assert make(tmp_path, base=fake_base(long_root)).docker_socket == p.docker_socket
    assert make(tmp_path, "other", base=fake_base(long_root)).docker_socket.parent != alias


def test_socket_path_keeps_short_paths(tmp_path: Path) -> None:
    p = make(tmp_path)
    short = Path("/run/x.sock")
    assert p.socket_path(short) == short


def test_socket_path_limit_is_exclusive_of_nul(tmp_path: Path) -> None:
    p = make(tmp_path, path_max=20)
    assert p.socket_path(Path("/" + "a" * 18)) == Path("/" + "a" * 18)  # 19 bytes + NUL = 20
    with pytest.raises(SettingsError):
        p.socket_path(Path("/" + "a" * 19))


def test_socket_path_too_long_even_for_alias_raises(tmp_path: Path) -> None:
    p = make(tmp_path, temp_dir="/" + "t" * 200)
    long = tmp_path / ("y" * 200) / "docker.sock"
    with pytest.raises(SettingsError, match="docker.sock"):
        p.socket_path(long)


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_ensure_dirs_creates_private_alias(tmp_path: Path) -> None:
    p = make(tmp_path, base=fake_base(tmp_path / ("x" * 120)))
    p.ensure_dirs()
    alias = p.docker_socket.parent
    assert stat.S_IMODE(alias.stat().st_mode) == 0o700
    assert stat.S_IMODE(alias.parent.stat().st_mode) == 0o700


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_ensure_dirs_refuses_symlinked_alias(tmp_path: Path) -> None:
    p = make(tmp_path, base=fake_base(tmp_path / ("x" * 120)))
    target = tmp_path / "elsewhere"
    target.mkdir()
    p.short_root.mkdir(parents=True)
    p.short_dir.symlink_to(target)
    with pytest.raises(SettingsError, match="symlink"):
        p.ensure_dirs()


def test_named_pipes(tmp_path: Path) -> None:
    p = make(tmp_path, "dev")
    assert p.named_pipe("docker") == r"\\.\pipe\pinnace-dev"
    assert p.named_pipe("control") == r"\\.\pipe\pinnace-dev-control"
    assert p.named_pipe("qmp") == r"\\.\pipe\pinnace-dev-qmp"  # QEMU's monitor on Windows
    with pytest.raises(ValueError):
        p.named_pipe("serial")
    assert npipe_url(p.named_pipe("docker")) == "npipe:////./pipe/pinnace-dev"
    with pytest.raises(ValueError):
        npipe_url(r"\\server\pipe\pinnace-dev")  # docker must never be pointed at a remote pipe
    with pytest.raises(SettingsError):
        pipe_name("dev-2\\..", "docker")


def test_real_platformdirs_layout_mentions_app_and_instance() -> None:
    p = Paths.for_instance("dev", env={})
    assert "pinnace" in str(p.config_dir).lower()
    assert p.config_dir.name == "dev" and p.runtime_dir.name == "dev" and p.log_dir.name == "dev"
    assert p.image_root.name == "images"
