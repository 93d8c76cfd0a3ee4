"""The Engine tab's logic: the user's engine.json as text, checked by the CLI's own parser.

`pinnace config engine` and this tab share `engine_config.parse`, so a key refused in one is
refused in the other (the message names it). An engine.json already on disk that is refused is
shown with its error but does not block saving other settings: the engine keeps running on its
last good configuration until the text is fixed, and an unchanged file is never rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.tray.settings_form import FormValues
from hypervisor import engine_config
from hypervisor import platform as host_platform
from hypervisor.engine_config import ENGINE_FILE, EngineConfigError

log = logging.getLogger(__name__)

EMPTY_TEXT = "{\n}\n"


@dataclass(frozen=True)
class EngineEdit:
    """One reading of the editor: the text, what it parses to (None when refused) and why not."""

    text: str
    user: dict[str, Any] | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.user is not None


def check(text: str, source: str = ENGINE_FILE, guest_refusal: str = "") -> EngineEdit:
    """The host's checks, then (when the running engine was asked about this text) its answer."""
    try:
        user = engine_config.parse(text, source)
    except EngineConfigError as exc:
        return EngineEdit(text, None, str(exc))
    if guest_refusal:
        return EngineEdit(text, None, f"{source}: dockerd refuses it: {guest_refusal}")
    return EngineEdit(text, user)


def load(path: Path | None) -> EngineEdit:
    """What is on disk now (an empty object when there is no file yet), checked."""
    if path is None:
        return check(EMPTY_TEXT)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return check(EMPTY_TEXT)
    except (OSError, UnicodeDecodeError) as exc:
        return EngineEdit("", None, f"{ENGINE_FILE}: cannot be read ({getattr(exc, 'strerror', None) or exc})")
    return check(text)


def changed(original: EngineEdit, edit: EngineEdit) -> bool:
    """Whether saving must write the file: by meaning, not layout (reformatting is no change)."""
    if original.ok and edit.ok:
        return original.user != edit.user
    return original.text.strip() != edit.text.strip()


def blocks_save(original: EngineEdit, edit: EngineEdit) -> bool:
    """A refused text blocks Save once the user has edited it; the file as found does not."""
    return not edit.ok and changed(original, edit)


def status_line(edit: EngineEdit) -> str:
    if not edit.ok:
        return edit.error
    if not edit.user:
        return "No settings of your own: the engine gets Pinnace's defaults."
    count = len(edit.user)
    return f"OK: {count} setting{'s' if count != 1 else ''} of your own, merged over Pinnace's."


def merged_config(edit: EngineEdit, values: FormValues, env: Mapping[str, str]) -> dict[str, Any]:
    """The daemon.json the engine would get at the next start: Pinnace's defaults, the form's
    proxy (or the environment's), then the user's keys (none while the text is refused)."""
    return engine_config.merged(edit.user or {}, engine_config.proxy_of(values, env))


def merged_text(edit: EngineEdit, values: FormValues, env: Mapping[str, str]) -> str:
    return engine_config.render(merged_config(edit, values, env))


def save(path: Path, edit: EngineEdit) -> None:
    """Write the checked text as the CLI does (rendered, owner-only)."""
    if edit.user is None:
        raise EngineConfigError(edit.error or f"{ENGINE_FILE}: refused")
    host_platform.current().write_private_text(path, engine_config.render(edit.user))
    log.info("saved engine settings to %s", path)
