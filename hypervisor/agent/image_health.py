"""The health check a new guest image must pass before it becomes known good: more than an
answering `/_ping` — the engine knows its storage, lists the existing containers, and the data
disk is mounted read-write in the guest. Pure verdicts over the answers, and one runner."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hypervisor import engine
from hypervisor.errors import MachineError, PinnaceError

if TYPE_CHECKING:
    from hypervisor.ssh import GuestSSH

DATA_MOUNT = "/data"  # where vmimage/guest/boot mounts the data disk
ENGINE_CALL_TIMEOUT_S = 15.0


class HealthError(MachineError):
    """The booted image is not healthy; the message says which check failed."""


def judge_info(code: int, body: bytes) -> str:
    """'' when `GET /info` shows a working engine with its storage, else why not."""
    if code != 200:
        return f"the engine answered {code} to GET /info"
    try:
        info = json.loads(body)
    except ValueError:
        return "the engine's /info is not JSON"
    if not isinstance(info, dict) or not info.get("Driver"):
        return "the engine reports no storage driver"
    return ""


def judge_containers(code: int, body: bytes) -> str:
    if code != 200:
        return f"the engine answered {code} when listing the containers"
    try:
        listed = json.loads(body)
    except ValueError:
        return "the engine's container list is not JSON"
    return "" if isinstance(listed, list) else "the engine's container list is not a list"


def judge_mounts(proc_mounts: str, mount_point: str = DATA_MOUNT) -> str:
    """'' when the data disk is mounted read-write at `mount_point` (from /proc/mounts)."""
    for line in proc_mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == mount_point:
            return "" if "rw" in fields[3].split(",") else f"the data disk is mounted read-only at {mount_point}"
    return f"the data disk is not mounted at {mount_point}"


async def check(open_engine_channel: Callable[[], object], ssh: GuestSSH | None, deadline: float) -> None:
    """Run every check once, within `deadline` (monotonic); HealthError naming the first failure."""
    loop = asyncio.get_running_loop()

    def engine_get(path: str) -> tuple[int, bytes]:
        channel = open_engine_channel()
        channel.settimeout(ENGINE_CALL_TIMEOUT_S)  # type: ignore[attr-defined]
        return engine.get(channel, path)  # type: ignore[arg-type]

    def mounts() -> str:
        if ssh is None:
            raise MachineError("the VM is not running")
        from hypervisor.ssh import run_command  # the agent loads SSH only once QEMU runs

        done = run_command(ssh, "cat /proc/mounts", timeout=max(1.0, min(15.0, deadline - time.monotonic())))
        return done.stdout.decode(errors="replace")

    try:
        problem = judge_info(*await loop.run_in_executor(None, engine_get, "/info"))
        if not problem:
            problem = judge_containers(*await loop.run_in_executor(None, engine_get, "/containers/json?all=1"))
        if not problem:
            problem = judge_mounts(await loop.run_in_executor(None, mounts))
    except (PinnaceError, OSError, ValueError) as exc:
        raise HealthError(f"the health check could not run: {exc}") from exc
    if problem:
        raise HealthError(f"health check failed: {problem}")
