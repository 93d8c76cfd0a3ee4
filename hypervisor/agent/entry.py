"""`python -m hypervisor.agent --name N`: one detached agent per instance, holding its lock,
logging to agent.log, until the VM is stopped or lost."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from hypervisor import platform as host_platform
from hypervisor.agent.agent import Agent
from hypervisor.paths import Paths

log = logging.getLogger("pinnace.agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pinnace-agent")
    parser.add_argument("--name", default="default")
    args = parser.parse_args(argv)
    paths = Paths.for_instance(args.name)
    paths.ensure_dirs()
    logging.basicConfig(
        level=logging.INFO, filename=str(paths.agent_log),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    # Reconnect attempts while the guest boots make paramiko log whole tracebacks; ours say enough.
    logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)
    logging.getLogger("qemu").setLevel(logging.WARNING)
    platform = host_platform.current()
    # Held open, and locked, for the agent's life; owner-only like every file of the instance.
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    lock = os.fdopen(os.open(paths.agent_lock, flags, 0o600), "a+")
    if not platform.try_lock(lock):
        log.info("another agent holds %s; exiting", paths.agent_lock)
        return 0
    log.info("agent %d for instance %s", os.getpid(), paths.instance)
    code = 1
    try:
        loop = asyncio.new_event_loop()
        # Room for blocking engine and SSH calls that a paused guest can hold for a while.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="agent"))
        code = loop.run_until_complete(Agent(paths, platform).run())
    except Exception:
        log.exception("agent crashed")
    finally:
        logging.shutdown()
        # Blocking helpers (an SSH connect waiting out its deadline) may still sit in executor
        # threads; the VM is already stopped or handed over, so do not wait for them.
        os._exit(code)
    return code
