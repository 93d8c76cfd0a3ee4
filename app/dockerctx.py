"""The `pinnace` docker context: created or updated at start, never made current unless asked."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading

from app import shell_env

log = logging.getLogger(__name__)

CONTEXT = "pinnace"


def context_name(instance: str) -> str:
    return CONTEXT if instance == "default" else f"{CONTEXT}-{instance}"


def context_argv(docker: str, name: str, host: str, exists: bool) -> list[str]:
    verb = "update" if exists else "create"
    return [docker, "context", verb, name, "--description", "Pinnace engine VM", "--docker", f"host={host}"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


def ensure_context(instance: str, host: str) -> str | None:
    """Returns the context name, or None when the docker CLI is not installed. `host` is
    launcher.docker_host(): unix://<socket>, or npipe:////./pipe/pinnace-<instance> on Windows."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    name = context_name(instance)
    exists = _run([docker, "context", "inspect", name]).returncode == 0
    result = _run(context_argv(docker, name, host, exists))
    if result.returncode != 0:
        log.warning("docker context %s failed: %s", name, result.stderr.strip())
        return None
    return name


def make_current(name: str) -> None:
    """`docker context use NAME`: only when the user asked for it (--use-context)."""
    docker = shutil.which("docker")
    if docker is not None:
        _run([docker, "context", "use", name])


class PendingContext:
    """`ensure_context` on a thread from the start of `pinnace start`: its two docker CLI runs
    (~0.2 s) overlap the boot instead of following it. `use` still happens only when the caller
    asks for the result, after the engine is up."""

    def __init__(self, instance: str, host: str) -> None:
        self._name: str | None = None
        self._thread = threading.Thread(target=self._run, args=(instance, host), name="docker-context", daemon=True)
        self._thread.start()

    def _run(self, instance: str, host: str) -> None:
        try:
            self._name = ensure_context(instance, host)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("docker context for %s failed: %s", instance, exc)

    def result(self, use: bool = False, timeout: float = 45.0) -> str | None:
        """The context's name once it exists (None without a docker CLI, or if it failed); made
        current if `use`."""
        self._thread.join(timeout)
        name = None if self._thread.is_alive() else self._name
        if name and use:
            make_current(name)
        return name


def default_shell(platform: str | None = None) -> str:
    """The shell `pinnace env` writes for: PowerShell on Windows (no `export` there), else sh."""
    return "powershell" if (sys.platform if platform is None else platform) == "win32" else "sh"


def env_lines(host: str, shell: str) -> list[str]:
    """The DOCKER_HOST line for `shell`, quoted as that shell needs (macOS paths hold spaces)."""
    return shell_env.env_lines({"DOCKER_HOST": host}, shell)
