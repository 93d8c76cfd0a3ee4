"""The tray's own small preferences (not VM settings): a JSON file in the instance config dir.

Kept apart from settings.toml because the CLI's validator owns that file and these choices
(e.g. what Quit does) mean nothing to the CLI.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

QUIT_CHOICES = ("ask", "stop", "keep")
FILE_NAME = "tray.json"


@dataclass
class TrayPrefs:
    quit_action: str = "ask"  # "ask" | "stop" (stop the VM too) | "keep" (leave it running)
    image_notice_told: int = 0  # the agent's image notice id last shown (each is shown once)

    @classmethod
    def load(cls, config_dir: Path) -> TrayPrefs:
        path = Path(config_dir) / FILE_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return cls()
        data = data if isinstance(data, dict) else {}
        action = data.get("quit_action")
        told = data.get("image_notice_told")
        return cls(quit_action=action if action in QUIT_CHOICES else "ask",
                   image_notice_told=told if type(told) is int and told >= 0 else 0)

    def save(self, config_dir: Path) -> None:
        config_dir = Path(config_dir)
        config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = config_dir / FILE_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def quit_plan(quit_action: str, state: str) -> str:
    """What Quit does now: nothing to ask when the VM is not up; otherwise the stored answer."""
    if state not in ("starting", "running", "paused"):  # a paused VM is still up (and holds memory)
        return "keep"
    return quit_action if quit_action in QUIT_CHOICES else "ask"
