"""User settings of one instance: the dataclass, its single validator, and TOML load/save.

The CLI and the tray both go through `validate`, so a value accepted in one is accepted in the
other; an invalid file is reported (file + key) and never rewritten.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from hypervisor import platform as host_platform
from hypervisor.errors import SettingsError
from hypervisor.hostinfo import cpu_count, host_os, total_memory_mib
from hypervisor.mounts import guest_path_problem

log = logging.getLogger(__name__)

ACCELS = ("auto", "kvm", "hvf", "whpx", "tcg")
# How host folders reach the guest (hypervisor/mounts.py): "auto" takes the measured winner where
# it is available; virtiofs needs a Linux host with virtiofsd.
SHARE_TRANSPORTS = ("auto", "9p", "virtiofs")
MIN_MEMORY_MIB = 512
MIN_DISK_GIB = 4
MAX_DISK_GIB = 2048


@dataclass(frozen=True)
class HostFacts:
    """What the host offers; passed in so validation is pure and testable."""

    cpus: int
    memory_mib: int
    os: str

    @classmethod
    def detect(cls) -> HostFacts:
        return cls(cpus=cpu_count(), memory_mib=total_memory_mib(), os=host_os())


@dataclass(frozen=True)
class Share:
    """A host directory to expose to containers (bind mounts land later; the field is kept now)."""

    path: str
    read_only: bool = False


def _home_shares(home: str) -> list[Share]:
    """The home directory as the default share, unless the guest refuses that path (a service
    account's home such as /var/lib/jenkins, or /): then nothing is shared by default."""
    return [Share(home)] if guest_path_problem(home) is None else []


def _default_shares() -> list[Share]:
    home = str(Path.home())
    return _home_shares(home) if os.path.isdir(home) else []


@dataclass
class Settings:
    cpus: int = field(default_factory=lambda: min(2, cpu_count()))
    memory_mib: int = 2048
    disk_gib: int = 64
    accel: str = "auto"
    expose_ports_on_all_interfaces: bool = False
    start_at_login: bool = False
    start_vm_with_app: bool = False
    shares: list[Share] = field(default_factory=_default_shares)
    share_transport: str = "auto"
    # The engine's proxy (dockerd's pulls and pushes, the guest's own tools; never containers').
    # Empty values are taken from the host's environment when the VM starts, unless
    # proxy_from_environment is false. A loopback proxy means the host's (hypervisor/engine_config).
    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    proxy_from_environment: bool = True
    # Extra CA certificates (PEM files) the engine and the guest trust, e.g. a private registry's
    # or a TLS-inspecting proxy's; host_ca_additions adds the host's own trust-store additions.
    ca_files: list[str] = field(default_factory=list)
    host_ca_additions: bool = False

    @classmethod
    def defaults(cls, host: HostFacts, home: str | None = None) -> Settings:
        """Defaults sized for `host` (never more CPUs than it has)."""
        shares = _home_shares(home) if home is not None else _default_shares()
        return cls(cpus=max(1, min(2, host.cpus)), shares=shares)


SCALAR_TYPES: dict[str, type] = {
    "cpus": int,
    "memory_mib": int,
    "disk_gib": int,
    "accel": str,
    "expose_ports_on_all_interfaces": bool,
    "start_at_login": bool,
    "start_vm_with_app": bool,
    "share_transport": str,
    "http_proxy": str,
    "https_proxy": str,
    "no_proxy": str,
    "proxy_from_environment": bool,
    "host_ca_additions": bool,
}
LIST_KEYS = ("ca_files",)
KEYS = (*SCALAR_TYPES, *LIST_KEYS, "shares")
PROXY_KEYS = ("http_proxy", "https_proxy")
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


# --- validation ------------------------------------------------------------------------------


def _is_absolute(path: str) -> bool:
    return PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute()


def validate_static(settings: Settings, current_disk_gib: int | None = None) -> None:
    """The checks that do not depend on the host."""
    if settings.cpus < 1:
        raise SettingsError(f"cpus: {settings.cpus} is less than 1")
    if settings.memory_mib < MIN_MEMORY_MIB:
        raise SettingsError(f"memory_mib: {settings.memory_mib} is less than the minimum {MIN_MEMORY_MIB}")
    if not MIN_DISK_GIB <= settings.disk_gib <= MAX_DISK_GIB:
        raise SettingsError(f"disk_gib: {settings.disk_gib} is outside {MIN_DISK_GIB}..{MAX_DISK_GIB}")
    if current_disk_gib is not None and settings.disk_gib < current_disk_gib:
        raise SettingsError(
            f"disk_gib: {settings.disk_gib} is smaller than the existing data disk "
            f"({current_disk_gib} GiB); disks can only grow"
        )
    if settings.accel not in ACCELS:
        raise SettingsError(f"accel: {settings.accel!r} is not one of {', '.join(ACCELS)}")
    if settings.share_transport not in SHARE_TRANSPORTS:
        raise SettingsError(
            f"share_transport: {settings.share_transport!r} is not one of {', '.join(SHARE_TRANSPORTS)}"
        )
    for key in PROXY_KEYS:
        problem = proxy_url_problem(getattr(settings, key))
        if problem:
            raise SettingsError(f"{key}: {getattr(settings, key)!r} {problem}")
    if any(ch.isspace() for ch in settings.no_proxy.replace(" ", "")):
        raise SettingsError("no_proxy: expected host names, domains or addresses separated by commas")
    for i, path in enumerate(settings.ca_files):
        if not _is_absolute(path):
            raise SettingsError(f"ca_files[{i}]: {path!r} is not an absolute path")
    for i, share in enumerate(settings.shares):
        if not _is_absolute(share.path):
            raise SettingsError(f"shares[{i}].path: {share.path!r} is not an absolute path")
        problem = guest_path_problem(share.path)
        if problem:
            raise SettingsError(f"shares[{i}].path: {share.path!r} {problem}; share another folder")


def validate(settings: Settings, host: HostFacts, current_disk_gib: int | None = None) -> None:
    """The one validator for CLI and tray; raises SettingsError naming the key."""
    if not 1 <= settings.cpus <= host.cpus:
        raise SettingsError(
            f"cpus: {settings.cpus} is outside 1..{host.cpus} (the host has {host.cpus} CPUs)"
        )
    # memory_mib 0 means the host's memory could not be read: only the lower bound applies then.
    if host.memory_mib and settings.memory_mib > host.memory_mib:
        raise SettingsError(
            f"memory_mib: {settings.memory_mib} is more than the host's {host.memory_mib} MiB"
        )
    validate_static(settings, current_disk_gib)
    if settings.share_transport == "virtiofs" and host.os != "linux":
        raise SettingsError(f"share_transport: virtiofs needs a Linux host (virtiofsd), not {host.os}; "
                            f"use auto or 9p")


def proxy_url_problem(url: str) -> str:
    """'' when `url` is empty or a usable proxy URL (scheme://[user:pass@]host[:port]), else why not."""
    import urllib.parse

    if not url:
        return ""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in PROXY_SCHEMES:
        return f"is not a proxy URL (scheme {parsed.scheme!r}; use one of {', '.join(PROXY_SCHEMES)})"
    try:
        port = parsed.port
    except ValueError:
        return "has an invalid port"
    if not parsed.hostname or (parsed.path not in ("", "/")) or parsed.query or port == 0:
        return "is not a proxy URL (expected http://host:port)"
    return ""


def pem_file_problem(path: str) -> str:
    """'' when `path` is a readable file holding at least one PEM certificate, else why not."""
    import base64
    import re

    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return "does not exist"
    except IsADirectoryError:
        return "is a directory, not a PEM file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    if not blocks:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    for block in blocks:
        try:
            base64.b64decode("".join(block.split()), validate=True)
        except ValueError:
            return "holds a damaged PEM certificate"
    return ""


# --- parsing ---------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """Render a value the way the user wrote it in TOML (so `true` is not shown as `True`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return repr(value) if not isinstance(value, (int, float)) else str(value)


_TYPE_NAMES = {int: "an integer", bool: "true or false", str: "a string"}


def _check_type(key: str, value: Any, expected: type) -> Any:
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        raise SettingsError(f"{key}: expected {_TYPE_NAMES[expected]}, got {_show(value)}")
    return value


def _parse_shares(value: Any) -> list[Share]:
    if not isinstance(value, list):
        raise SettingsError(f"shares: expected an array of tables, got {_show(value)}")
    shares = []
    for i, item in enumerate(value):
        key = f"shares[{i}]"
        if not isinstance(item, dict):
            raise SettingsError(f"{key}: expected a table with 'path', got {_show(item)}")
        unknown = set(item) - {"path", "read_only"}
        if unknown:
            raise SettingsError(f"{key}.{sorted(unknown)[0]}: unknown key")
        if "path" not in item:
            raise SettingsError(f"{key}.path: missing")
        shares.append(
            Share(
                path=_check_type(f"{key}.path", item["path"], str),
                read_only=_check_type(f"{key}.read_only", item.get("read_only", False), bool),
            )
        )
    return shares


def from_dict(data: dict[str, Any], base: Settings) -> Settings:
    """Overlay a parsed TOML table on `base`; unknown keys and wrong types raise."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise SettingsError(f"{key}: unknown key (known: {', '.join(KEYS)})")
        if key == "shares":
            values[key] = _parse_shares(value)
        elif key in LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SettingsError(f"{key}: expected an array of strings, got {_show(value)}")
            values[key] = list(value)
        else:
            values[key] = _check_type(key, value, SCALAR_TYPES[key])
    return dataclasses.replace(base, **values)


def load(path: Path, host: HostFacts, current_disk_gib: int | None = None, *, validated: bool = True) -> Settings:
    """Read and validate the settings file; a missing file means defaults.

    `validated=False` only parses it (types, known keys): for `config set` of the key that makes
    the file invalid (a share the guest refuses), which set_value then validates as a whole."""
    path = Path(path)
    defaults = Settings.defaults(host)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return defaults
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read", exc) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: not valid TOML", exc) from exc
    try:
        settings = from_dict(data, defaults)
        if validated:
            validate(settings, host, current_disk_gib)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}", exc.cause) from exc
    return settings


# --- CLI get/set -----------------------------------------------------------------------------


def _parse_text(key: str, text: str) -> Any:
    if key == "shares":
        return _parse_shares_text(text)
    if key in LIST_KEYS:
        return [part.strip() for part in text.split(",") if part.strip()]
    expected = SCALAR_TYPES[key]
    stripped = text.strip()
    if expected is bool:
        lowered = stripped.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise SettingsError(f"{key}: expected true or false, got {text!r}")
    if expected is int:
        try:
            return int(stripped, 10)
        except ValueError:
            raise SettingsError(f"{key}: expected an integer, got {text!r}") from None
    return stripped


def _parse_shares_text(text: str) -> list[Share]:
    """`PATH[:ro],PATH[:ro]...`; an empty string clears the list."""
    shares = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        read_only = part.endswith(":ro")
        shares.append(Share(part[:-3] if read_only else part, read_only))
    return shares


def _format_text(key: str, value: Any) -> str:
    if key == "shares":
        return ",".join(s.path + (":ro" if s.read_only else "") for s in value)
    if key in LIST_KEYS:
        return ",".join(value)
    return value if isinstance(value, str) else _show(value)


def set_value(
    settings: Settings,
    key: str,
    text_value: str,
    host: HostFacts | None = None,
    current_disk_gib: int | None = None,
    *,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> Settings:
    """Return a copy with `key` parsed from CLI text; validated (against `host` when given).

    Setting `shares` also checks that each folder exists (`is_dir`) now: the VM would refuse to
    start with one that does not (mounts.plan).
    """
    if key not in KEYS:
        raise SettingsError(f"{key}: unknown key (known: {', '.join(KEYS)})")
    updated = dataclasses.replace(settings, **{key: _parse_text(key, text_value)})
    if host is not None:
        validate(updated, host, current_disk_gib)
    else:
        validate_static(updated, current_disk_gib)
    if key == "shares":
        for i, share in enumerate(updated.shares):
            if not is_dir(share.path):
                what = ("is not a directory on this host" if os.path.lexists(share.path)
                        else "does not exist on this host; create it first")
                raise SettingsError(f"shares[{i}].path: {share.path!r} {what}")
    if key == "ca_files":
        for i, path in enumerate(updated.ca_files):
            problem = pem_file_problem(path)
            if problem:
                raise SettingsError(f"ca_files[{i}]: {path!r} {problem}")
    return updated


def get_value(settings: Settings, key: str) -> str:
    """The CLI text form of one key (round-trips through `set_value`)."""
    if key not in KEYS:
        raise SettingsError(f"{key}: unknown key (known: {', '.join(KEYS)})")
    return _format_text(key, getattr(settings, key))


# --- saving ----------------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot serialise {type(value).__name__} to TOML")


def to_toml(settings: Settings) -> str:
    """Our tiny TOML writer: flat scalars, then `[[shares]]` tables."""
    lines = ["# Pinnace instance settings (see `pinnace config --help`)."]
    for key in (*SCALAR_TYPES, *LIST_KEYS):
        lines.append(f"{key} = {_toml_value(getattr(settings, key))}")
    if not settings.shares:
        lines.append("shares = []")
    for share in settings.shares:
        lines += ["", "[[shares]]", f"path = {_toml_value(share.path)}"]
        lines.append(f"read_only = {_toml_value(share.read_only)}")
    return "\n".join(lines) + "\n"


def save(
    path: Path,
    settings: Settings,
    host: HostFacts | None = None,
    current_disk_gib: int | None = None,
) -> None:
    """Validate, then atomically replace the file (0600); an invalid value leaves the file untouched."""
    if host is not None:
        validate(settings, host, current_disk_gib)
    else:
        validate_static(settings, current_disk_gib)
    path = Path(path)
    text = to_toml(settings)
    plat = host_platform.current()
    try:
        plat.private_dir(path.parent, tighten=False)
        plat.write_atomic(path, text.encode("utf-8"), private=True)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot write", exc) from exc
    log.info("saved settings to %s", path)
