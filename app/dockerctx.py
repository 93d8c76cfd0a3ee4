"""The `pinnace` docker context: created or updated at start, never made current unless asked."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

from app import shell_env

log = logging.getLogger(__name__)

CONTEXT = "pinnace"


def context_name(instance: str) -> str:
    return CONTEXT if instance == "default" else f"{CONTEXT}-{instance}"


def context_argv(docker: str, name: str, host: str, exists: bool) -> list[str]:
    verb = "update" if exists else "create"
    return [docker, "context", verb, name, "--description", "Pinnace engine VM", "--docker", f"host={host}"]


def ensure_context(instance: str, host: str, use: bool = False) -> str | None:
    """Returns the context name, or None when the docker CLI is not installed. `host` is
    launcher.docker_host(): unix://<socket>, or npipe:////./pipe/pinnace-<instance> on Windows."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    name = context_name(instance)
    run = lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=20)  # noqa: E731
    exists = run([docker, "context", "inspect", name]).returncode == 0
    result = run(context_argv(docker, name, host, exists))
    if result.returncode != 0:
        log.warning("docker context %s failed: %s", name, result.stderr.strip())
        return None
    if use:
        run([docker, "context", "use", name])
    return name


def default_shell(platform: str | None = None) -> str:
    """The shell `pinnace env` writes for: PowerShell on Windows (no `export` there), else sh."""
    return "powershell" if (sys.platform if platform is None else platform) == "win32" else "sh"


def env_lines(host: str, shell: str) -> list[str]:
    """The DOCKER_HOST line for `shell`, quoted as that shell needs (macOS paths hold spaces)."""
    return shell_env.env_lines({"DOCKER_HOST": host}, shell)
