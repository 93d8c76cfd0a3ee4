"""The settings dialog's logic: form values -> Settings, checked by the CLI's own validator.

Errors are attributed to a field by the key the shared validator puts first in its message
("cpus: ..."), so the dialog can show each one next to its input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hypervisor.accel import DISPLAY, HARDWARE
from hypervisor.errors import SettingsError
from hypervisor.settings import HostFacts, Settings, validate

FIELDS = ("cpus", "memory_mib", "disk_gib", "accel", "start_at_login", "start_vm_with_app")
RESTART_KEYS = ("cpus", "memory_mib", "disk_gib", "accel")


@dataclass(frozen=True)
class FormValues:
    cpus: int
    memory_mib: int
    disk_gib: int
    accel: str
    start_at_login: bool
    start_vm_with_app: bool

    @classmethod
    def from_settings(cls, s: Settings) -> FormValues:
        return cls(**{f: getattr(s, f) for f in FIELDS})


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


def error_key(message: str) -> str:
    """`cpus: 9 is outside 1..8` -> `cpus`; unknown prefixes land on the form as a whole."""
    head = message.split(":", 1)[0].strip()
    return head if head in FIELDS else "form"


def check(values: FormValues, base: Settings, host: HostFacts, current_disk_gib: int | None) -> FormResult:
    """Overlay the form on `base` (keeping fields the form does not show) and validate."""
    candidate = dataclasses.replace(base, **dataclasses.asdict(values))
    try:
        validate(candidate, host, current_disk_gib)
    except SettingsError as exc:
        message = str(exc)
        return FormResult(None, {error_key(message): message})
    return FormResult(candidate, {})


def restart_changes(old: Settings, new: Settings) -> list[str]:
    """Keys whose new value only takes effect when the VM restarts."""
    return [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]


def restart_note(changes: list[str]) -> str:
    if not changes:
        return ""
    names = {"cpus": "CPUs", "memory_mib": "memory", "disk_gib": "disk size", "accel": "accelerator"}
    listed = ", ".join(names[c] for c in changes)
    return f"Changing {listed} takes effect after the VM restarts."
