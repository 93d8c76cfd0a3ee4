"""The settings dialog's logic: form values -> Settings, checked by the CLI's own validator.

Errors are attributed to a field by the key the shared validator puts first in its message
("cpus: ...", "ca_files[1]: ..."), so the dialog can show each one next to its input and mark
the tab that holds it. Files the form names (shares, CA files) are also checked on disk here,
as `pinnace config set` does: the VM would refuse to start with them otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hypervisor.accel import DISPLAY, HARDWARE
from hypervisor.engine_config import LINUX_CA_DIRS, MACOS_SYSTEM_KEYCHAIN, proxy_of
from hypervisor.errors import SettingsError
from hypervisor.settings import HostFacts, Settings, Share, pem_file_problem, validate

FIELDS = (
    "cpus", "memory_mib", "disk_gib", "accel", "start_at_login", "start_vm_with_app",
    "shares", "share_transport", "expose_ports_on_all_interfaces",
    "http_proxy", "https_proxy", "no_proxy", "proxy_from_environment",
    "ca_files", "host_ca_additions",
)
# Everything the VM is built with at boot; only the two start options apply without a restart.
RESTART_KEYS = tuple(f for f in FIELDS if f not in ("start_at_login", "start_vm_with_app"))
ENGINE_KEY = "engine"  # engine.json: not a Settings field, but shown, checked and restarted alike

# Which tab shows which key ("form" errors go below the tabs).
SECTIONS: dict[str, tuple[str, ...]] = {
    "General": ("cpus", "memory_mib", "disk_gib", "accel", "start_at_login", "start_vm_with_app"),
    "Sharing & ports": ("shares", "share_transport", "expose_ports_on_all_interfaces"),
    "Network": ("http_proxy", "https_proxy", "no_proxy", "proxy_from_environment"),
    "Certificates": ("ca_files", "host_ca_additions"),
    "Engine": (ENGINE_KEY,),
}
NAMES = {
    "cpus": "CPUs", "memory_mib": "memory", "disk_gib": "disk size", "accel": "accelerator",
    "shares": "shared folders", "share_transport": "share transport",
    "expose_ports_on_all_interfaces": "port exposure", "http_proxy": "HTTP proxy",
    "https_proxy": "HTTPS proxy", "no_proxy": "proxy exceptions", "proxy_from_environment": "proxy source",
    "ca_files": "CA certificates", "host_ca_additions": "host CA certificates", ENGINE_KEY: "engine settings",
}
SHARE_TRANSPORT_CHOICES = (
    ("auto", "Automatic (virtiofs where available, else 9p)"),
    ("virtiofs", "virtiofs (Linux hosts)"),
    ("9p", "9p"),
)


@dataclass(frozen=True)
class FormValues:
    """What the dialog shows; lists are tuples so two readings compare by value."""

    cpus: int
    memory_mib: int
    disk_gib: int
    accel: str
    start_at_login: bool
    start_vm_with_app: bool
    shares: tuple[Share, ...] = ()
    share_transport: str = "auto"
    expose_ports_on_all_interfaces: bool = False
    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    proxy_from_environment: bool = True
    ca_files: tuple[str, ...] = ()
    host_ca_additions: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> FormValues:
        values = {f: getattr(s, f) for f in FIELDS}
        values["shares"] = tuple(s.shares)
        values["ca_files"] = tuple(s.ca_files)
        return cls(**values)

    def apply(self, base: Settings) -> Settings:
        """`base` with the form's fields replaced (not dataclasses.asdict: Share must stay a Share)."""
        values = {f: getattr(self, f) for f in FIELDS}
        values["shares"] = list(self.shares)
        values["ca_files"] = list(self.ca_files)
        return dataclasses.replace(base, **values)


@dataclass(frozen=True)
class FormResult:
    settings: Settings | None
    errors: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.settings is not None


def accel_choices(host_os: str) -> list[tuple[str, str]]:
    """(value, label) pairs: auto, the host's hardware accelerator, and TCG."""
    choices = [("auto", "Automatic (best available)")]
    hardware = HARDWARE.get(host_os)
    if hardware:
        choices.append((hardware, DISPLAY[hardware]))
    choices.append(("tcg", f"{DISPLAY['tcg']} (software, slow)"))
    return choices


def share_transport_choices(host_os: str) -> list[tuple[str, str]]:
    """virtiofs only where it can work (the validator refuses it elsewhere)."""
    return [(v, label) for v, label in SHARE_TRANSPORT_CHOICES if v != "virtiofs" or host_os == "linux"]


_KEY = re.compile(r"^([a-z_]+)(?:\[(\d+)\])?")


def error_key(message: str) -> str:
    """`cpus: 9 is outside 1..8` -> `cpus`, `shares[0].path: ...` -> `shares`; unknown prefixes
    land on the form as a whole."""
    match = _KEY.match(message.split(":", 1)[0].strip())
    key = match.group(1) if match else ""
    return key if key in FIELDS or key == ENGINE_KEY else "form"


def error_index(message: str) -> int | None:
    """The list position an error names (`ca_files[1]: ...` -> 1), so the dialog can mark that row."""
    match = _KEY.match(message)
    return int(match.group(2)) if match and match.group(2) is not None else None


def section_of(key: str) -> str | None:
    return next((name for name, keys in SECTIONS.items() if key in keys), None)


def file_problems(
    values: FormValues,
    is_dir: Callable[[str], bool] = os.path.isdir,
    pem_problem: Callable[[str], str] = pem_file_problem,
) -> dict[str, str]:
    """The first missing shared folder and the first CA file that is not PEM, by key (the
    validator only judges the paths' form)."""
    problems: dict[str, str] = {}
    for i, share in enumerate(values.shares):
        if os.path.isabs(share.path) and not is_dir(share.path):
            what = ("is not a directory on this host" if os.path.lexists(share.path)
                    else "does not exist on this host; create it first")
            problems["shares"] = f"shares[{i}].path: {share.path!r} {what}"
            break
    for i, path in enumerate(values.ca_files):
        problem = pem_problem(path)
        if problem:
            problems["ca_files"] = f"ca_files[{i}]: {path!r} {problem}"
            break
    return problems


def check(
    values: FormValues,
    base: Settings,
    host: HostFacts,
    current_disk_gib: int | None,
    *,
    is_dir: Callable[[str], bool] = os.path.isdir,
    pem_problem: Callable[[str], str] = pem_file_problem,
) -> FormResult:
    """Overlay the form on `base` (keeping fields the form does not show) and validate."""
    candidate = values.apply(base)
    errors: dict[str, str] = {}
    try:
        validate(candidate, host, current_disk_gib)
    except SettingsError as exc:
        message = str(exc)
        errors[error_key(message)] = message
    for key, message in file_problems(values, is_dir, pem_problem).items():
        errors.setdefault(key, message)
    return FormResult(None if errors else candidate, errors)


def restart_changes(old: Settings, new: Settings, engine_changed: bool = False) -> list[str]:
    """Keys whose new value only takes effect when the VM restarts (engine.json among them)."""
    changes = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
    return [*changes, ENGINE_KEY] if engine_changed else changes


def restart_note(changes: list[str]) -> str:
    if not changes:
        return ""
    listed = ", ".join(NAMES[c] for c in changes)
    return f"Changing {listed} takes effect after the VM restarts."


def environment_proxy_note(values: FormValues, env: Mapping[str, str]) -> str:
    """What the engine would use now for the proxy, so "use the host's environment" is not a guess."""
    proxy = proxy_of(values, env)
    if proxy.empty:
        if values.proxy_from_environment:
            return "No proxy: none is set here, nor in the host's environment (http_proxy, https_proxy)."
        return "No proxy."
    return f"The engine will use: {proxy.describe()}."


def host_additions_hint(host_os: str) -> str:
    """Where "the host's additions" come from on this OS."""
    if host_os == "linux":
        return "Certificates in " + " and ".join(str(d) for d in LINUX_CA_DIRS) + "."
    if host_os == "darwin":
        return f"Certificates an administrator added to {MACOS_SYSTEM_KEYCHAIN}."
    return f"Not read on {host_os}: add the certificate files above instead."
