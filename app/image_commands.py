"""`pinnace image status | rollback | update --from DIR`: the instance's guest image slots
(hypervisor/agent/image_slots) from the command line. Building and describing images stays
vmimage's (`image build`, `image info`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import UsageError
from hypervisor import launcher
from hypervisor.agent.image_slots import ImageSlots
from hypervisor.control import Status
from hypervisor.paths import Paths

SLOT_COMMANDS = ("status", "rollback", "update")


def add_arguments(sub: Any) -> None:
    """The slot subcommands, on `pinnace image`'s subparsers."""
    st = sub.add_parser("status", help="the instance's image slots: known good, previous, candidate, failures")
    st.add_argument("--json", action="store_true")
    rb = sub.add_parser("rollback", help="boot the previous known-good image again (restarts a running VM)")
    rb.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    up = sub.add_parser("update", help="stage the image in DIR as the next start's candidate")
    up.add_argument("--from", dest="source", type=Path, required=True, metavar="DIR",
                    help="a directory holding a built image (manifest.json and its artefacts)")


def format_slots(summary: dict[str, Any], status: Status) -> str:
    lines = []
    for row in summary["slots"]:
        mark = "  <- running" if row["running"] else ""
        missing = "" if row["present"] else "  (missing from the store)"
        lines.append(f"{row['role']:11} {row['version'] or '?':10} {row['fingerprint']}  "
                     f"kernel {row['kernel'] or '?'}  rootfs sha256 {row['rootfs_sha256'][:16]}…{mark}{missing}")
    if not lines:
        lines.append("no image has booted in this instance yet")
    for failure in summary["failed"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(failure["at"]))
        lines.append(f"failed      {failure['version']:10} {failure['fingerprint']}  {when}: {failure['reason']}")
        lines.extend(f"            | {line}" for line in failure.get("console") or [])
    if status.image_fingerprint and status.state in ("starting", "running", "paused"):
        lines.append(f"running     {status.image_version} ({status.image_fingerprint}), {status.image_role}")
    if summary["notice"]:
        lines.append(f"last event  {summary['notice']}")
    return "\n".join(lines)


def cmd_status(paths: Paths, args: argparse.Namespace) -> int:
    status = launcher.current_status(paths)
    booted = status.image_fingerprint if status.state in ("starting", "running", "paused") else ""
    summary = ImageSlots(paths).summary(booted)
    if args.json:
        print(json.dumps({**summary, "running": booted}, indent=2))
    else:
        print(format_slots(summary, status))
    return 0


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("rollback needs confirmation: run it in a terminal or pass --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_rollback(paths: Paths, args: argparse.Namespace, restart: Callable[[Paths], int]) -> int:
    slots = ImageSlots(paths)
    current, previous = slots.rollback_pair()  # SlotError: nothing to roll back to, and why
    status = launcher.current_status(paths)
    running = status.state in ("starting", "running", "paused", "error") and bool(status.agent_pid)
    restart_note = " The VM restarts: running containers stop." if running else ""
    question = (f"Roll back the guest image from {current.manifest.version} to {previous.manifest.version}? "
                f"Containers, images and volumes are kept.{restart_note}")
    if not _confirm(question, args.yes):
        print("rollback cancelled; nothing changed")
        return 1
    was, now = slots.rollback()
    print(f"rolled back: {now} is the known-good image again (from {was})")
    if running:
        return restart(paths)
    print("it boots at the next `pinnace start`")
    return 0


def cmd_update(paths: Paths, args: argparse.Namespace) -> int:
    source = args.source.expanduser()
    if not source.is_dir():
        raise UsageError(f"--from {source}: not a directory")
    staged, is_known_good = ImageSlots(paths).update_from(source.resolve())
    if is_known_good:
        print(f"{staged} is already the known-good image: nothing to stage")
        return 0
    status = launcher.current_status(paths)
    print(f"staged {staged} as the next image: it boots, is checked, and becomes known good "
          f"(or the current image comes back)")
    if status.state in ("running", "paused"):
        print("run `pinnace restart` to boot it now")
    return 0


def run(paths: Paths, args: argparse.Namespace, restart: Callable[[Paths], int]) -> int:
    if args.image_command == "status":
        return cmd_status(paths, args)
    if args.image_command == "rollback":
        return cmd_rollback(paths, args, restart)
    return cmd_update(paths, args)
