"""Where one Pinnace instance keeps its config, data, runtime sockets, logs and caches.

Pure path arithmetic: nothing touches the filesystem until `ensure_dirs()` is called, so the
CLI can print paths (and tests can build them) without side effects.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from hypervisor import platform as host_platform
from hypervisor.errors import SettingsError
from hypervisor.hostinfo import current_uid
from hypervisor.platform import NotPrivateError
from hypervisor.platform.windows import PIPE_PREFIX
from hypervisor.platform.windows import npipe_url as npipe_url  # re-exported: the pipe syntax is Windows'

log = logging.getLogger(__name__)

APP_NAME = "pinnace"
HOME_ENV = "PINNACE_HOME"
INSTANCE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
PIPE_KINDS = ("docker", "control", "qmp")


def unix_path_max(plat: str | None = None) -> int:
    """Size of `sockaddr_un.sun_path` (including the NUL): 108 on Linux, 104 on macOS and the BSDs."""
    return (host_platform.current() if plat is None else host_platform.for_os(plat)).unix_path_max


UNIX_PATH_MAX = unix_path_max()


def validate_instance_name(name: str) -> str:
    """Instance names end up in paths, pipe names and QEMU `-name`, so keep them boring."""
    if not isinstance(name, str) or not INSTANCE_RE.match(name):
        raise SettingsError(
            f"instance name {name!r} is invalid: "
            "use 1-32 of a-z, 0-9, '_' or '-', starting with a letter or digit"
        )
    return name


def pipe_name(instance: str, kind: str) -> str:
    r"""The one source of Windows pipe names: the engine ("docker") at \\.\pipe\pinnace-<instance>,
    the agent's control API at \\.\pipe\pinnace-<instance>-control, and QEMU's monitor (QMP, a
    pipe QEMU itself creates) at \\.\pipe\pinnace-<instance>-qmp."""
    validate_instance_name(instance)
    if kind == "docker":
        return f"{PIPE_PREFIX}pinnace-{instance}"
    if kind in ("control", "qmp"):
        return f"{PIPE_PREFIX}pinnace-{instance}-{kind}"
    raise ValueError(f"unknown pipe kind {kind!r}; expected one of {PIPE_KINDS}")


@dataclass(frozen=True)
class BaseDirs:
    """The per-user application directories; injectable so tests can fake any OS."""

    config: Path
    data: Path
    state: Path
    log: Path
    cache: Path
    runtime: Path | None  # None where the platform has no real per-user runtime dir

    @classmethod
    def detect(cls, os_name: str) -> BaseDirs:
        dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
        runtime: Path | None = None
        if host_platform.for_os(os_name).has_runtime_dir:
            with warnings.catch_warnings():
                # Without XDG_RUNTIME_DIR platformdirs warns and falls back to /tmp/runtime-<uid>;
                # ensure_dirs() makes that private, so the warning is only noise.
                warnings.simplefilter("ignore")
                runtime = Path(dirs.user_runtime_dir)
        return cls(
            config=Path(dirs.user_config_dir),
            data=Path(dirs.user_data_dir),
            state=Path(dirs.user_state_dir),
            log=Path(dirs.user_log_dir),
            cache=Path(dirs.user_cache_dir),
            runtime=runtime,
        )


@dataclass(frozen=True)
class Paths:
    """All filesystem locations of one instance."""

    instance: str
    config_dir: Path
    data_dir: Path
    runtime_dir: Path
    log_dir: Path
    cache_dir: Path
    image_root: Path
    short_root: Path
    """Parent of the short socket alias dirs (`<tmp>/pinnace-<uid>`), used when runtime_dir is too long."""
    path_max: int = UNIX_PATH_MAX

    @classmethod
    def for_instance(
        cls,
        name: str = "default",
        env: Mapping[str, str] | None = None,
        *,
        host_os: str | None = None,
        base: BaseDirs | None = None,
        temp_dir: str | None = None,
        uid: int | None = None,
        path_max: int | None = None,
    ) -> Paths:
        """Compute (not create) the layout; keyword arguments exist so tests can fake the host."""
        validate_instance_name(name)
        env = os.environ if env is None else env
        os_name = host_os or host_platform.current().os_name
        uid = current_uid() if uid is None else uid
        short_root = Path(temp_dir or tempfile.gettempdir()) / f"pinnace-{uid if uid is not None else 'user'}"
        limit = path_max if path_max is not None else UNIX_PATH_MAX
        home = env.get(HOME_ENV, "").strip()
        if home:
            root = Path(home).expanduser()
            if not root.is_absolute():
                raise SettingsError(f"{HOME_ENV}: {home!r} is not an absolute path")
            return cls(
                instance=name,
                config_dir=root / "config" / name,
                data_dir=root / "data" / name,
                runtime_dir=root / "run" / name,
                log_dir=root / "logs" / name,
                cache_dir=root / "cache",
                image_root=root / "images",
                short_root=short_root,
                path_max=limit,
            )
        base = base or BaseDirs.detect(os_name)
        runtime = base.runtime / name if base.runtime is not None else base.state / "run" / name
        return cls(
            instance=name,
            config_dir=base.config / "instances" / name,
            data_dir=base.data / "instances" / name,
            runtime_dir=runtime,
            log_dir=base.log / name,
            cache_dir=base.cache,
            image_root=base.data / "images",
            short_root=short_root,
            path_max=limit,
        )

    # --- files -------------------------------------------------------------------------------

    @property
    def settings_file(self) -> Path:
        return self.config_dir / "settings.toml"

    @property
    def data_disk(self) -> Path:
        return self.data_dir / "data.qcow2"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def qmp_socket(self) -> Path:
        """With the VM's records, not in the runtime dir: a new agent must reach QEMU's monitor
        after a logout removed the runtime dir under the running VM."""
        return self.socket_path(self.data_dir / "qmp.sock")

    @property
    def ssh_mux_socket(self) -> Path:
        """The ssh ControlMaster's socket; with the records, so a wiped runtime dir keeps it."""
        return self.socket_path(self.data_dir / "ssh-mux.sock")

    @property
    def ssh_known_hosts(self) -> Path:
        """The guest's pinned host key in OpenSSH's format, for the ControlMaster."""
        return self.data_dir / "ssh_known_hosts"

    @property
    def ssh_master_log(self) -> Path:
        return self.log_dir / "ssh-master.log"

    @property
    def control_socket(self) -> Path:
        return self.socket_dir / "agent.sock"

    @property
    def docker_socket(self) -> Path:
        return self.socket_dir / "docker.sock"

    # The VM's records (its pid, the agent's lock, the SSH port, the last status, the shares it
    # booted with) live with its data, where a logout or a wiped runtime dir cannot take them
    # while the VM runs: the next agent finds the VM again instead of booting a second one.

    @property
    def shares_record(self) -> Path:
        return self.data_dir / "shares.fwcfg"

    @property
    def qemu_pidfile(self) -> Path:
        return self.data_dir / "qemu.pid"

    @property
    def agent_pidfile(self) -> Path:
        return self.data_dir / "agent.pid"

    @property
    def agent_lock(self) -> Path:
        return self.data_dir / "agent.lock"

    @property
    def ssh_port_file(self) -> Path:
        return self.data_dir / "ssh.port"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def serial_log(self) -> Path:
        return self.log_dir / "serial.log"

    @property
    def agent_log(self) -> Path:
        return self.log_dir / "agent.log"

    @property
    def probe_cache(self) -> Path:
        return self.cache_dir / "accel-probe.json"

    # --- unix sockets ------------------------------------------------------------------------

    @property
    def short_dir(self) -> Path:
        """Deterministic per-runtime-dir alias, so two instances never share one."""
        digest = hashlib.sha256(os.fsencode(str(self.runtime_dir))).hexdigest()[:12]
        return self.short_root / digest

    @property
    def socket_dir(self) -> Path:
        """runtime_dir, or the short alias when the longest socket name would not fit there."""
        longest = self.runtime_dir / "docker.sock"
        return self.runtime_dir if self._fits(longest) else self.short_dir

    def socket_path(self, p: Path) -> Path:
        """`p` if it fits in sun_path, else the same file name in the short alias directory."""
        if self._fits(p):
            return p
        alias = self.short_dir / p.name
        if not self._fits(alias):
            raise SettingsError(
                f"socket path {p} is too long for a unix socket ({self.path_max - 1} bytes max) "
                f"and so is its short alias {alias}; set {HOME_ENV} to a shorter directory"
            )
        return alias

    def _fits(self, p: Path) -> bool:
        return len(os.fsencode(str(p))) < self.path_max  # sun_path also holds the trailing NUL

    def named_pipe(self, kind: str) -> str:
        """Windows named pipe for the docker engine ("docker"), the agent's control API ("control")
        or QEMU's monitor ("qmp")."""
        return pipe_name(self.instance, kind)

    # --- creation ----------------------------------------------------------------------------

    def all_dirs(self) -> list[Path]:
        return [
            self.config_dir,
            self.data_dir,
            self.keys_dir,
            self.runtime_dir,
            self.log_dir,
            self.cache_dir,
            self.image_root,
        ]

    def ensure_dirs(self) -> None:
        """Create every directory private to the user (0700), tightening existing ones too."""
        for directory in self.all_dirs():
            _make_private_dir(directory)
        for sock in (self.qmp_socket, self.ssh_mux_socket, self.control_socket, self.docker_socket):
            sock = self.socket_path(sock)
            if sock.parent == self.short_dir:
                # The alias lives in the shared temp dir: its parent must be ours too.
                _make_private_dir(self.short_root, shared_parent=True)
                _make_private_dir(sock.parent, shared_parent=True)


def _make_private_dir(directory: Path, shared_parent: bool = False) -> None:
    """The platform's private directory; in a shared temp dir also refuse symlinks someone planted."""
    try:
        host_platform.current().private_dir(directory, refuse_symlink=shared_parent)
    except NotPrivateError as exc:
        raise SettingsError(str(exc)) from exc
    except OSError as exc:
        raise SettingsError(f"cannot create directory {directory}", exc) from exc
