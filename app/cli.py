"""The `pinnace` command line. Every failure is one readable line and a non-zero exit:
0 ok, 1 failure, 2 usage. Details go to the agent log."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from app import dockerctx, engine_commands, image_commands, shell_env
from app.errors import UsageError
from hypervisor import engine, launcher, operations
from hypervisor import settings as settings_mod
from hypervisor.control import Status
from hypervisor.disk import GIB
from hypervisor.errors import OperationError, PinnaceError, SettingsError
from hypervisor.operations import Step, disk_bytes  # noqa: F401 - disk_bytes: the CLI's, re-exported
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts
from vmimage import cli as image_cli
from vmimage.errors import ImageError

log = logging.getLogger("pinnace.cli")


def version() -> str:
    try:
        return metadata.version("pinnace")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinnace", description="Docker Engine in a tiny, fast VM.")
    p.add_argument("--version", action="version", version=f"pinnace {version()}")
    p.add_argument("--name", default="default", help="instance name (default: default)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("start", help="boot the engine VM in the background")
    s.add_argument("--cpus", type=int)
    s.add_argument("--memory", type=int, metavar="MIB", dest="memory_mib")
    s.add_argument("--disk", type=int, metavar="GIB", dest="disk_gib")
    s.add_argument("--accel", choices=sorted(settings_mod.ACCELS))
    s.add_argument("--use-context", action="store_true", help="also make `pinnace` the current docker context")
    sub.add_parser("stop", help="shut the VM down cleanly")
    sub.add_parser("pause", help="pause the VM (it keeps its memory and uses no CPU); start resumes it")
    sub.add_parser("restart", help="stop, then start")
    st = sub.add_parser("status", help="state, accelerator, resources, socket")
    st.add_argument("--json", action="store_true")
    r = sub.add_parser("reset", help="delete the data disk and keys (containers, images, volumes) and start fresh")
    r.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    lg = sub.add_parser("logs", help="show the agent log or the guest's serial console")
    lg.add_argument("--follow", "-f", action="store_true")
    which = lg.add_mutually_exclusive_group()
    which.add_argument("--serial", action="store_true", help="the guest's serial console")
    which.add_argument("--agent", action="store_true", help="the host agent's log (default)")
    c = sub.add_parser("config", help="read or change settings")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="{get,set,show,engine}")
    g = csub.add_parser("get")
    g.add_argument("key")
    cs = csub.add_parser("set")
    cs.add_argument("key")
    cs.add_argument("value")
    csub.add_parser("show")
    engine_commands.add_arguments(csub)
    sh = sub.add_parser("ssh", help="a shell (or a command) in the guest")
    sh.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (after --)")
    e = sub.add_parser("env", help="print DOCKER_HOST for your shell")
    e.add_argument("--shell", choices=shell_env.SHELLS, default=dockerctx.default_shell())
    img = sub.add_parser("image", help="build, describe, update or roll back the guest image")
    image_commands.add_arguments(image_cli.add_arguments(img))
    sub.add_parser("tray", help="start the tray app")
    dg = sub.add_parser("diagnose", help="check QEMU, the image, the disk and the VM; each row names its fix",
                        description="Checks the host, the image and the VM (exit 0 when none fails). "
                                    "--bundle writes a support archive with logs and results, secrets removed "
                                    "(exit 0 when it was written).")
    dg_out = dg.add_mutually_exclusive_group()
    dg_out.add_argument("--json", action="store_true", help="the results as JSON")
    dg_out.add_argument("--bundle", nargs="?", const="", default=None, metavar="FILE",
                        help="write a support bundle (.tar.gz; default ./pinnace-diagnose-<instance>-<time>.tar.gz)")
    return p


# --- helpers --------------------------------------------------------------------------------


def _host() -> HostFacts:
    return HostFacts.detect()


def _current_disk_gib(paths: Paths) -> int | None:
    try:
        from hypervisor.disk import virtual_size_gib
        from hypervisor.hostinfo import host_os
        from hypervisor.qemu_binary import find_qemu_img

        if not paths.data_disk.exists():
            return None
        return virtual_size_gib(find_qemu_img(host_os(), os.environ, shutil.which, Path.is_file), paths.data_disk)
    except PinnaceError:
        return None


def load_settings(paths: Paths, host: HostFacts | None = None, disk_gib: int | None = None) -> settings_mod.Settings:
    """Settings validated against this host and the existing disk (pass them when already known)."""
    host = host or _host()
    disk_gib = disk_gib if disk_gib is not None else _current_disk_gib(paths)
    return settings_mod.load(paths.settings_file, host, disk_gib)


def _mib(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n // 1024} GiB" if n % 1024 == 0 else f"{n} MiB"


def describe(status: Status) -> str:
    lines = [f"instance   {status.instance}", f"state      {status.state}" +
             (f" ({status.reason})" if status.reason and status.state != "running" else "")]
    if status.stage and status.state == "starting":
        lines.append(f"stage      {status.stage}")
    if status.accel:
        lines.append(f"accel      {status.accel} — {status.accel_reason}")
    if status.accel_warning:
        lines.append(f"warning    {status.accel_warning}")
    if status.agent_pid or status.qemu_pid:
        lines.append(f"pids       agent {status.agent_pid or '-'}, qemu {status.qemu_pid or '-'}")
    if status.state == "running" and status.ready_at:
        lines.append(f"uptime     {int(time.time() - (status.started_at or status.ready_at))} s")
    if status.cpus:
        lines.append(f"resources  {status.cpus} CPUs, {_mib(status.memory_mib)} memory, {status.disk_gib} GiB disk")
    if status.engine_version:
        lines.append(f"engine     Docker {status.engine_version}")
    if status.clock_offset_s is not None and status.state in ("running", "paused"):
        lines.append(f"clock      guest {status.clock_offset_s:+.3f} s from the host")
    if status.host_ssh_agent and status.state in ("running", "paused"):
        lines.append(f"ssh-agent  {status.host_ssh_agent}")
    if status.engine_proxy and status.state in ("running", "paused"):
        lines.append(f"proxy      {status.engine_proxy}")
    if status.engine_ca and status.state in ("running", "paused"):
        lines.append(f"CAs        {status.engine_ca}")
    if status.engine_config_warning and status.state in ("running", "paused"):
        lines.append(f"warning    {status.engine_config_warning}")
    if status.image_version and status.state in ("starting", "running", "paused"):
        lines.append(f"image      {status.image_version} ({status.image_fingerprint[:12]}), {status.image_role}")
    if status.image_notice and status.state in ("starting", "running", "paused", "error"):
        lines.append(f"update     {status.image_notice}")
    if status.image_note and status.state in ("starting", "running", "paused"):
        lines.append(f"note       {status.image_note}")
    if status.clock_warning:
        lines.append(f"warning    {status.clock_warning}")
    if status.docker_socket:
        lines.append(f"socket     {status.docker_socket}")
    if status.socket_transport and status.state in ("running", "paused"):
        lines.append(f"transport  {status.socket_transport}")
    for i, share in enumerate(status.shares):
        mode = "read-only" if share.get("read_only") else "read-write"
        lines.append(f"{'shares' if i == 0 else '':10} {share.get('path')} ({share.get('transport')}, {mode})")
    return "\n".join(lines)


class Progress:
    """Prints each new boot stage with the seconds since start."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = ""

    def __call__(self, status: Status) -> None:
        label = status.stage or status.state
        if label != self.last and status.state in ("starting", "stopping"):
            self.last = label
            print(f"  {time.monotonic() - self.started:5.1f} s  {label}", flush=True)


def _docker_context(paths: Paths) -> dockerctx.PendingContext:
    return dockerctx.PendingContext(paths.instance, launcher.docker_host(paths))


def _print_ready(paths: Paths, status: Status, context: dockerctx.PendingContext, use_context: bool) -> None:
    host = launcher.docker_host(paths)
    env_line = dockerctx.env_lines(host, dockerctx.default_shell())[0]  # PowerShell syntax on Windows
    print(f"Pinnace is running: Docker {status.engine_version} ({status.accel})")
    if status.accel_warning:
        print(f"warning: {status.accel_warning}")
    print(f"engine socket: {launcher.engine_address(paths)}")
    ctx = context.result(use=use_context)
    if ctx and use_context:
        print(f"docker context '{ctx}' is now current")
    elif ctx:
        print(f"use it with:   docker context use {ctx}")
        print(f"          or:  {env_line}")
    else:
        print(f"use it with:   {env_line}")


# --- commands -------------------------------------------------------------------------------


STEP_LINES = {
    Step.ALREADY_RUNNING: "pinnace: instance '{name}' is already running",
    Step.READOPTING: "pinnace: instance '{name}' was running without its agent: re-adopting it",
    Step.STARTING: "Starting Pinnace instance '{name}'…",
    Step.NOT_RUNNING: "pinnace: instance '{name}' is not running",
    Step.STOPPING: "Stopping '{name}'…",
    Step.RESTARTING: "Restarting '{name}'…",
    Step.WIPED: "data disk and keys deleted; starting fresh…",
    Step.RESUMING: "Resuming the paused instance '{name}'…",
}


def announce(paths: Paths) -> Callable[[Step], None]:
    """Prints the line for each phase of an operation as it begins."""

    def say(step: Step) -> None:
        line = STEP_LINES.get(step)
        if line is not None:
            print(line.format(name=paths.instance), flush=True)

    return say


def failed(exc: OperationError) -> int:
    if exc.op == "start":
        print(f"pinnace: start failed: {exc} (details: pinnace logs)", file=sys.stderr)
    else:
        print(f"pinnace: {exc.op} failed: {exc.status.reason}", file=sys.stderr)
    return 1


def cmd_start(paths: Paths, args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("cpus", "memory_mib", "disk_gib", "accel")
                 if getattr(args, k) is not None}
    host, disk_gib = _host(), _current_disk_gib(paths)
    current = load_settings(paths, host, disk_gib)
    change = None
    if overrides:
        updated = current
        for key, value in overrides.items():
            updated = settings_mod.set_value(updated, key, str(value), host, disk_gib)
        change = operations.change_settings(paths, updated, host, disk_gib)
    context = _docker_context(paths)
    try:
        final = operations.start(paths, change, on_step=announce(paths), on_update=Progress())
    except OperationError as exc:
        context.result()
        return failed(exc)
    _print_ready(paths, final, context, args.use_context)
    return 0


def cmd_stop(paths: Paths, _args: argparse.Namespace) -> int:
    say, began = announce(paths), [time.monotonic()]

    def on_step(step: Step) -> None:
        began.append(time.monotonic())
        say(step)

    if operations.stop(paths, on_step=on_step):
        print(f"stopped in {time.monotonic() - began[-1]:.1f} s")
    return 0


def cmd_pause(paths: Paths, _args: argparse.Namespace) -> int:
    status = operations.pause(paths)
    print(f"pinnace: instance '{paths.instance}' is paused; `pinnace start` resumes it"
          if status.state == "paused" else f"pinnace: instance '{paths.instance}' is {status.state}")
    return 0 if status.state == "paused" else 1


def cmd_restart(paths: Paths, _args: argparse.Namespace) -> int:
    context = _docker_context(paths)
    try:
        final = operations.restart(paths, on_step=announce(paths), on_update=Progress())
    except OperationError as exc:
        context.result()
        return failed(exc)
    _print_ready(paths, final, context, False)
    return 0


def cmd_status(paths: Paths, args: argparse.Namespace) -> int:
    status = launcher.current_status(paths)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print(describe(status))
    return 0 if status.state not in ("error", "paused") else 1


def usage_line(usage: engine.EngineUsage | None) -> str:
    if usage is None:
        return "  every container, image and volume (the engine is not running, so they cannot be counted)"
    return (f"  {usage.containers} containers, {usage.images} images, {usage.volumes} volumes "
            f"({usage.disk_bytes / GIB:.2f} GiB)")


def reset_summary(paths: Paths, status: Status) -> list[str]:
    preview = operations.reset_preview(paths, status)
    lines = [usage_line(preview.engine)]
    if preview.data_disk is not None:
        lines.append(f"  the data disk {preview.data_disk} ({preview.data_disk_bytes / GIB:.2f} GiB on disk)")
    lines.append("  the instance's SSH keys (new ones are made)")
    return lines


def cmd_reset(paths: Paths, args: argparse.Namespace) -> int:
    status = launcher.current_status(paths)
    print(f"Reset deletes, for instance '{paths.instance}':")
    print("\n".join(reset_summary(paths, status)))
    print(f"and keeps your settings ({paths.settings_file}).")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("reset needs confirmation: run it in a terminal or pass --yes")
        answer = input("Delete all of this and start fresh? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("reset cancelled; nothing was deleted")
            return 1
    try:
        operations.reset(paths, on_step=announce(paths), on_update=Progress())
    except OperationError as exc:
        return failed(exc)
    print("reset done: the engine is running with an empty data disk")
    return 0


def cmd_logs(paths: Paths, args: argparse.Namespace) -> int:
    path = paths.serial_log if args.serial else paths.agent_log
    if not path.exists():
        print(f"pinnace: no log yet at {path}", file=sys.stderr)
        return 1
    with open(path, "rb") as f:
        sys.stdout.buffer.write(f.read())
        sys.stdout.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(0.3)
    return 0


def cmd_config(paths: Paths, args: argparse.Namespace) -> int:
    if args.config_command == "engine":
        return engine_commands.run(paths, args)
    host, disk_gib = _host(), _current_disk_gib(paths)
    if args.config_command == "set" and args.key == "shares":
        # Setting the shares replaces a list the guest refuses (a file edited by hand): read the
        # file without validating it; set_value validates the result, existence included.
        current = settings_mod.load(paths.settings_file, host, disk_gib, validated=False)
    else:
        current = load_settings(paths, host, disk_gib)
    if args.config_command == "show":
        print(settings_mod.to_toml(current), end="")
        return 0
    if args.config_command == "get":
        print(settings_mod.get_value(current, args.key))
        return 0
    updated = settings_mod.set_value(current, args.key, args.value, host, disk_gib)
    settings_mod.save(paths.settings_file, updated, host, disk_gib)
    print(f"{args.key} = {settings_mod.get_value(updated, args.key)}")
    if launcher.client(paths).is_alive():
        print("the new value applies at the next start (pinnace restart)")
    return 0


def cmd_env(paths: Paths, args: argparse.Namespace) -> int:
    """Quoted for the shell: the path may hold a space (macOS), a quote or a dollar sign."""
    try:
        lines = shell_env.env_lines({"DOCKER_HOST": launcher.docker_host(paths)}, args.shell)
    except ValueError as exc:  # cmd.exe cannot carry every value
        print(f"pinnace: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def cmd_ssh(paths: Paths, args: argparse.Namespace) -> int:
    status = launcher.current_status(paths)
    if status.state != "running" or not status.ssh_port:
        print(f"pinnace: instance '{paths.instance}' is not running", file=sys.stderr)
        return 1
    from hypervisor.keys import ensure_instance_keys

    keys = ensure_instance_keys(paths.keys_dir, paths.instance)
    known = Path(tempfile.mkdtemp(prefix="pinnace-ssh-")) / "known_hosts"
    known.write_text(f"[127.0.0.1]:{status.ssh_port} {keys.host_public}\n")
    known.chmod(0o600)
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    ssh = shutil.which("ssh")
    if ssh is None:
        print("pinnace: the OpenSSH client (ssh) is needed for `pinnace ssh`", file=sys.stderr)
        return 1
    argv = [ssh, "-q", "-i", str(keys.client_key), "-p", str(status.ssh_port),
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "root@127.0.0.1", *cmd]
    sys.stdout.flush()
    import subprocess

    return subprocess.call(argv)


def cmd_diagnose(paths: Paths, args: argparse.Namespace) -> int:
    from hypervisor import diagnose
    from hypervisor.diagnose import report

    if args.bundle is not None:
        try:
            written = diagnose.write_bundle(paths, Path(args.bundle) if args.bundle else None,
                                            on_progress=lambda line: print(f"  {line}", flush=True))
        except OSError as exc:
            print(f"pinnace: cannot write the bundle: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"support bundle written: {written}")
        return 0
    if args.json:
        results = diagnose.run_checks(paths)
        print(report.to_json(results, paths.instance))
        return diagnose.exit_code(results)
    print(f"Diagnosing instance '{paths.instance}'", flush=True)
    print(report.header(), flush=True)
    results = diagnose.run_checks(paths, on_result=lambda result: print(report.row(result), flush=True))
    print(f"\n{report.summary(results)}")
    return diagnose.exit_code(results)


def cmd_tray(paths: Paths, _args: argparse.Namespace) -> int:
    from app.tray_main import main as tray_main

    return int(tray_main(["--name", paths.instance]) or 0)


COMMANDS = {
    "start": cmd_start, "stop": cmd_stop, "pause": cmd_pause, "restart": cmd_restart, "status": cmd_status,
    "reset": cmd_reset, "logs": cmd_logs, "config": cmd_config, "env": cmd_env, "ssh": cmd_ssh,
    "tray": cmd_tray, "diagnose": cmd_diagnose,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="pinnace: %(message)s")
    try:
        if args.command == "image" and args.image_command not in image_commands.SLOT_COMMANDS:
            return image_cli.run(args)
        paths = Paths.for_instance(args.name)
        paths.ensure_dirs()
        if args.command == "image":
            return image_commands.run(paths, args, lambda p: cmd_restart(p, args))
        return COMMANDS[args.command](paths, args)
    except UsageError as exc:
        print(f"pinnace: {exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"pinnace: {exc}", file=sys.stderr)
        return 2 if args.command == "config" else 1
    except (PinnaceError, ImageError) as exc:
        print(f"pinnace: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pinnace: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
