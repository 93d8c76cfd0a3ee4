"""What a boot hands the guest for its engine (hypervisor/engine_config has the rules): the merged
daemon.json, the one the engine last started with (its fallback), and the extra CA bundle, as
private files for fw_cfg; and, once the engine answered, that configuration kept as last good.

A user's engine.json that is refused here (hand-edited since `pinnace config engine` checked it)
does not stop the VM: the last good configuration boots, and the status says why.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypervisor import engine_config
from hypervisor.engine_config import EngineConfigError, Proxy
from hypervisor.paths import Paths
from hypervisor.platform import Platform
from hypervisor.settings import Settings

log = logging.getLogger("pinnace.agent")

REFUSED_MARK = "PINNACE-ENGINE-CONFIG-REFUSED"  # the guest's engine script prints it (vmimage/guest/engine)


@dataclass
class EngineSetup:
    user: dict[str, Any]
    proxy: Proxy
    ca: engine_config.CaBundle
    fw_cfg: list[tuple[str, Path]] = field(default_factory=list)
    warning: str = ""


def _read_last_good(paths: Paths) -> dict[str, Any]:
    try:
        return engine_config.parse((paths.data_dir / engine_config.LAST_GOOD_FILE).read_text(encoding="utf-8"))
    except (OSError, EngineConfigError, UnicodeDecodeError):
        return {}


def _macos_text(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False).stdout


def prepare(paths: Paths, settings: Settings, platform: Platform, env: Mapping[str, str]) -> EngineSetup:
    """The engine's files for this boot; EngineConfigError only for a bad CA file (the start
    then fails naming it: pulls would otherwise fail later with an x509 error nobody explains)."""
    warnings = []
    last_good = _read_last_good(paths)
    try:
        user = engine_config.load_user(paths.config_dir)
    except EngineConfigError as exc:
        warnings.append(f"{exc}: the engine runs with its last good configuration")
        user = last_good
    proxy = engine_config.proxy_of(settings, env)
    additions: engine_config.Additions = []
    if settings.host_ca_additions:
        additions, note = engine_config.host_additions(platform.os_name, _macos_text)
        if note:
            warnings.append(note)
    ca = engine_config.ca_bundle(settings.ca_files, additions)
    rt = paths.runtime_dir
    files = [("opt/pinnace/engine.json", rt / "engine.json", engine_config.merged(user, proxy)),
             ("opt/pinnace/engine_last_good.json", rt / "engine_last_good.json",
              engine_config.merged(last_good, proxy))]
    setup = EngineSetup(user, proxy, ca, warning="; ".join(warnings))
    for name, path, config in files:
        platform.write_private_text(path, engine_config.render(config))
        setup.fw_cfg.append((name, path))
    if not proxy.empty:
        platform.write_private_text(rt / "proxy.sh", engine_config.profile_lines(proxy))
        setup.fw_cfg.append(("opt/pinnace/proxy.sh", rt / "proxy.sh"))
    if ca.count:
        platform.write_private_text(rt / "ca.pem", ca.text)
        setup.fw_cfg.append(("opt/pinnace/ca.pem", rt / "ca.pem"))
    if setup.warning:
        log.warning("%s", setup.warning)
    return setup


def refusal(console_lines: list[str]) -> str:
    """dockerd's reason when the guest fell back from the user's configuration, else ''."""
    for line in console_lines:
        if REFUSED_MARK in line:
            return line.split(REFUSED_MARK, 1)[1].strip() or "dockerd refused it"
    return ""


def remember_good(paths: Paths, platform: Platform, user: dict[str, Any]) -> None:
    """The engine answered with `user`'s configuration: the fallback of later boots."""
    try:
        platform.write_private_text(paths.data_dir / engine_config.LAST_GOOD_FILE,
                                    json.dumps(user, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("cannot keep the engine configuration as last good: %s", exc)
