"""`pinnace config engine [show | check [FILE|-] | set FILE|- | edit | reset]`: the user's
daemon.json (engine.json in the instance's config dir), checked on the host and, with the VM
running, by the guest's own dockerd before it is saved. It applies at the next (re)start; a file
refused then leaves the engine on its last good configuration (hypervisor/engine_config)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.errors import UsageError
from hypervisor import engine_config, launcher
from hypervisor import platform as host_platform
from hypervisor.engine_config import EngineConfigError
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts
from hypervisor.settings import load as load_settings

ACTIONS = ("show", "check", "set", "edit", "reset")


def add_arguments(config_sub: Any) -> None:
    e = config_sub.add_parser("engine", help="the engine's daemon.json: show, check, set, edit, reset",
                              description="Your daemon.json settings (registry mirrors, insecure registries, log "
                                          "driver and options, address pools, features), merged over Pinnace's.")
    e.add_argument("action", nargs="?", default="show", choices=ACTIONS)
    e.add_argument("file", nargs="?", help="a JSON file, or - for standard input (check, set)")


def _read_source(name: str | None) -> tuple[str, str]:
    if name is None:
        raise UsageError("give the file to read (or - for standard input)")
    if name == "-":
        return sys.stdin.read(), "standard input"
    try:
        return Path(name).read_text(encoding="utf-8"), name
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{name}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def _proxy(paths: Paths) -> engine_config.Proxy:
    """The proxy the engine would get at the next start, as the agent chooses it."""
    return engine_config.proxy_of(load_settings(paths.settings_file, HostFacts.detect()), os.environ)


def check(paths: Paths, text: str, source: str) -> dict[str, Any]:
    """The parsed configuration, or EngineConfigError naming the key (the host's checks, then
    the running guest's dockerd)."""
    user = engine_config.parse(text, source)
    from hypervisor import engine_validate  # a guest round trip; its imports (paramiko) only here

    problem = engine_validate.validate_in_guest(paths, engine_config.merged(user, _proxy(paths)))
    if problem:
        raise EngineConfigError(f"{source}: dockerd refuses it: {problem}")
    return user


def _save(paths: Paths, user: dict[str, Any]) -> None:
    host_platform.current().write_private_text(paths.config_dir / engine_config.ENGINE_FILE,
                                               engine_config.render(user))


def _applies_note(paths: Paths) -> str:
    return " (`pinnace restart` applies it)" if launcher.client(paths).is_alive() else ""


def _edit(paths: Paths) -> int:
    current = paths.config_dir / engine_config.ENGINE_FILE
    text = current.read_text(encoding="utf-8") if current.exists() else "{\n}\n"
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="engine-", delete=False) as draft:
        draft.write(text)
    try:
        if subprocess.call([*shlex.split(editor), draft.name]) != 0:
            raise UsageError(f"the editor ({editor}) failed; nothing was saved")
        edited = Path(draft.name).read_text(encoding="utf-8")
        user = check(paths, edited, str(current))
    except EngineConfigError:
        print(f"pinnace: your edit is kept in {draft.name}", file=sys.stderr)
        raise
    _save(paths, user)
    os.unlink(draft.name)
    print(f"saved {current}{_applies_note(paths)}")
    return 0


def run(paths: Paths, args: argparse.Namespace) -> int:
    path = paths.config_dir / engine_config.ENGINE_FILE
    if args.action == "show":
        user = engine_config.load_user(paths.config_dir)
        proxy = _proxy(paths)
        print(f"# your settings ({path}{'' if path.exists() else ', none yet'}):")
        print(engine_config.render(user), end="")
        print("# what the engine gets (Pinnace's defaults, the proxy, then yours):")
        print(engine_config.render(engine_config.merged(user, proxy)), end="")
        return 0
    if args.action == "reset":
        path.unlink(missing_ok=True)
        print(f"removed {path}: the engine gets Pinnace's defaults{_applies_note(paths)}")
        return 0
    if args.action == "edit":
        return _edit(paths)
    text, source = _read_source(args.file)
    user = check(paths, text, source)
    if args.action == "check":
        print(f"{source}: OK ({len(user)} setting(s))")
        return 0
    _save(paths, user)
    print(f"saved {path}{_applies_note(paths)}")
    return 0
