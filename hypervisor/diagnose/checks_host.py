"""The checks that need no running VM: QEMU, the accelerator, the image, the data disk (room and
qcow2 health), the agent's and QEMU's records, and the permissions of the private paths."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor import accel, disk, process
from hypervisor.diagnose.context import Context, QemuFacts
from hypervisor.diagnose.result import Finding, failed, one_line, passed, skipped, warned
from hypervisor.errors import PinnaceError
from hypervisor.hostinfo import current_uid, host_arch
from hypervisor.keys import CLIENT_KEY_NAME, HOST_KEY_NAME
from hypervisor.platform import NotPrivateError
from hypervisor.qemu_binary import QemuBinary, find_qemu, install_hint

log = logging.getLogger(__name__)

GIB = 1024**3
FREE_FAIL_BYTES = 1 * GIB  # the VM pauses when its disk's file system fills up (resumes at 128 MiB)
FREE_WARN_BYTES = 5 * GIB
QEMU_IMG_TIMEOUT_S = 120.0


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# --- QEMU ----------------------------------------------------------------------------------------


def check_qemu(ctx: Context) -> Finding:
    os_name = ctx.platform.os_name
    arch = ctx.arch()
    try:
        path = find_qemu(arch, os_name, ctx.env, shutil.which, Path.is_file)
        qemu = QemuBinary.probe(path)
    except PinnaceError as exc:
        return failed(one_line(exc), install_hint(os_name, arch))
    ctx.qemu = QemuFacts(qemu.path, qemu.version_text, qemu.accelerators)
    try:
        img = f"; qemu-img at {ctx.qemu_img()}"
    except PinnaceError as exc:
        return failed(f"QEMU {qemu.version_text} at {qemu.path}, but {one_line(exc)}", install_hint(os_name, arch))
    accels = ", ".join(sorted(qemu.accelerators)) or "none"
    return passed(f"QEMU {qemu.version_text} at {qemu.path} (accelerators: {accels}){img}")


# --- the accelerator -----------------------------------------------------------------------------


def _hardware_hint(os_name: str) -> str:
    return {
        "linux": "make /dev/kvm usable: enable virtualisation (VT-x/AMD-V) in the firmware, load kvm_intel or "
                 "kvm_amd, add yourself to the kvm group; then `pinnace restart`",
        "darwin": "HVF needs a Mac with hardware virtualisation (kern.hv_support = 1); then `pinnace restart`",
        "windows": "turn on \"Windows Hypervisor Platform\" in Windows Features, reboot, then `pinnace restart`",
    }.get(os_name, "this host has no hardware accelerator Pinnace can use")


def check_accel(ctx: Context) -> Finding:
    os_name = ctx.platform.os_name
    status = ctx.status
    if ctx.agent_answers and status.accel:
        detail = status.accel_reason or status.accel
        if status.accel_warning:
            detail = f"{detail}; {status.accel_warning}"
        if status.accel != "tcg" or "requested" in status.accel_reason or "guest on a" in status.accel_reason:
            return passed(detail)
        return warned(detail, _hardware_hint(os_name))
    settings = ctx.settings()
    requested = settings.accel if settings is not None else "auto"
    arch = ctx.arch()
    if arch != host_arch():
        return passed(f"TCG: {arch} guest on a {host_arch()} host (emulated); nothing is running now")
    if requested == "tcg":
        return passed("TCG: requested in settings")
    want = accel.candidate(os_name) if requested == "auto" else requested
    if want == "tcg":
        return warned(f"no hardware accelerator on this host: the VM will run under TCG ({accel.SLOWDOWN})",
                      _hardware_hint(os_name))
    name = accel.DISPLAY.get(want, want)
    if ctx.qemu is not None and want not in ctx.qemu.accelerators:
        return warned(f"this QEMU does not support {name}: the VM would run under TCG", _hardware_hint(os_name))
    cached = _cached_probe(ctx, want)
    if cached is None:
        return passed(f"{name} looks usable; its boot probe runs at the next start")
    if cached.ok:
        return passed(f"{name}: boot probe passed in {cached.seconds:.1f} s (cached)")
    if requested == "auto":
        return warned(f"{name} failed its boot probe ({cached.reason}): the VM falls back to TCG",
                      _hardware_hint(os_name))
    return failed(f"accel {want} is set but {name} failed its boot probe ({cached.reason})",
                  f"fix {name} or `pinnace config set accel auto`")


def _cached_probe(ctx: Context, want: str) -> accel.ProbeResult | None:
    if ctx.qemu is None:
        return None
    image = ctx.image
    if image is None:
        try:
            from hypervisor.agent import guest_image

            image = guest_image.locate(ctx.arch())
        except PinnaceError:
            return None
    identity = accel.ProbeIdentity(socket.gethostname(), str(ctx.qemu.path), ctx.qemu.version,
                                   image.manifest.artifacts["kernel"].sha256)
    return accel.ProbeCache(ctx.paths.probe_cache).get(identity.key(want))


# --- the image -----------------------------------------------------------------------------------

IMAGE_HINT = "rebuild it with `pinnace image build` (or reinstall Pinnace if it came with the image)"


def check_image(ctx: Context) -> Finding:
    from hypervisor.agent import guest_image

    try:
        image = guest_image.locate(ctx.arch())
    except PinnaceError as exc:
        return failed(one_line(exc, 400), IMAGE_HINT)
    ctx.image = image
    kinds = tuple(image.manifest.artifacts)
    try:
        guest_image.verify(image, trust_cache=False, kinds=kinds)
    except PinnaceError as exc:
        return failed(one_line(exc, 400), IMAGE_HINT)
    m = image.manifest
    return passed(f"{m.name} {m.version} ({m.arch}, kernel {m.kernel_version}) in {image.directory}: "
                  f"{len(kinds)} artefacts match their sha256 ({', '.join(sorted(kinds))})")


# --- the data disk -------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _qemu_img_json(argv: list[str]) -> tuple[int, Any, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    try:
        data = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        data = None
    return proc.returncode, data, (proc.stderr or proc.stdout).strip()


def _disk_info(ctx: Context) -> dict[str, Any] | None:
    if "disk_info" not in ctx.memo:
        info = None
        if ctx.paths.data_disk.exists():
            try:
                code, data, _ = _qemu_img_json(disk.info_argv(ctx.qemu_img(), ctx.paths.data_disk))
                info = data if code == 0 and isinstance(data, dict) else None
            except (PinnaceError, OSError, subprocess.SubprocessError) as exc:
                log.info("qemu-img info: %s", exc)
        ctx.memo["disk_info"] = info
    return ctx.memo["disk_info"]


def check_disk_space(ctx: Context) -> Finding:
    where = _existing(ctx.paths.data_dir)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return failed(f"cannot read the free space of {where}: {exc}", "check that the file system is mounted")
    free = usage.free
    info = _disk_info(ctx)
    growth = ""
    if info is not None:
        virtual, actual = int(info.get("virtual-size", 0)), int(info.get("actual-size", 0))
        growth = f"; the data disk uses {_gib(actual)} of its {_gib(virtual)}"
    detail = f"{_gib(free)} free on the file system holding {ctx.paths.data_dir}{growth}"
    hint = ("free space there, or remove unused images and containers (`docker system prune`): "
            "the VM pauses when that file system is full")
    if free < FREE_FAIL_BYTES:
        return failed(detail, hint)
    if free < FREE_WARN_BYTES:
        return warned(detail, hint)
    return passed(detail)


DISK_HINT = ("stop the VM (`pinnace stop`), back up {disk}, then `qemu-img check -r all {disk}`; "
             "`pinnace reset` starts over with a new disk (deletes containers, images and volumes)")


def check_disk_image(ctx: Context) -> Finding:
    path = ctx.paths.data_disk
    if not path.exists():
        return skipped("no data disk yet (the first start makes it)")
    try:
        qemu_img = ctx.qemu_img()
    except PinnaceError as exc:
        return failed(one_line(exc), install_hint(ctx.platform.os_name))
    hint = DISK_HINT.format(disk=path)
    in_use = disk.in_use(qemu_img, path) is not None
    info = _disk_info(ctx)
    data = ((info or {}).get("format-specific") or {}).get("data") or {}
    if data.get("corrupt"):
        return failed(f"QEMU has marked {path} corrupt", hint)
    if info is not None and info.get("dirty-flag"):
        if in_use:
            return passed("in use by the running VM and not marked corrupt (its refcounts are updated lazily "
                          "while it runs: the full qcow2 check needs the VM stopped)")
        return warned(f"{path} was not closed cleanly (QEMU ended without closing it)",
                      "the next `pinnace start` repairs its lazily updated refcounts")
    try:
        code, result, err = _qemu_img_json([str(qemu_img), "check", "-U", "--output=json", str(path)])
    except (OSError, subprocess.SubprocessError) as exc:
        return warned(f"qemu-img check could not run: {one_line(exc)}", "run it again with the VM stopped")
    counts = result if isinstance(result, dict) else {}
    corruptions, leaks = int(counts.get("corruptions", 0)), int(counts.get("leaks", 0))
    if code in (0, 3) and not corruptions:
        leaked = (f"; {leaks} leaked clusters (harmless: `qemu-img check -r leaks {path}` with the VM stopped "
                  f"reclaims them)") if leaks else ""
        return passed(f"qcow2 check found no errors{' (in use: read with -U)' if in_use else ''}{leaked}")
    if code == 2 or corruptions:
        if in_use:
            return warned(f"qcow2 check of the disk in use found {corruptions} errors, which may be writes in "
                          f"flight", "stop the VM and run `pinnace diagnose` again to be sure")
        return failed(f"qcow2 check found {corruptions} errors in {path}", hint)
    if code == 63:
        return warned("qemu-img cannot check this disk's format", "nothing to do unless the VM misbehaves")
    if in_use and ("-U" in err or "force-share" in err or "invalid option" in err or "lock" in err.lower()):
        return warned("in use: this qemu-img cannot check a disk in use (no -U)", "stop the VM to check it")
    return warned(f"qemu-img check did not complete: {one_line(err) or f'exit code {code}'}",
                  "stop the VM and run `pinnace diagnose` again")


# --- the agent and QEMU --------------------------------------------------------------------------


def check_processes(ctx: Context) -> Finding:
    paths, status = ctx.paths, ctx.status
    qemu_pid = process.read_pidfile(paths.qemu_pidfile)
    qemu_ours = process.is_our_qemu(qemu_pid, paths.instance)
    if not ctx.agent_answers:
        if qemu_ours:
            return warned(f"QEMU pid {qemu_pid} of this instance runs without its agent",
                          "`pinnace status` re-adopts it (a new agent takes it over); `pinnace stop` ends it")
        if qemu_pid is not None:
            return warned(f"{paths.qemu_pidfile} names pid {qemu_pid}, which is not this instance's QEMU (stale)",
                          "harmless: the next start replaces it")
        if status.state == "error":
            return failed(f"the VM stopped with an error: {status.reason or 'no reason recorded'}",
                          "`pinnace start`; the details are in `pinnace logs`")
        return passed("not running: no agent and no QEMU of this instance")
    notes = []
    agent_pid = process.read_pidfile(paths.agent_pidfile)
    if status.agent_pid and agent_pid is not None and agent_pid != status.agent_pid:
        notes.append(f"{paths.agent_pidfile.name} names pid {agent_pid}, the agent answering is {status.agent_pid}")
    if status.state in ("running", "paused"):
        if not status.qemu_pid:
            return failed(f"the agent says {status.state} but reports no QEMU", "`pinnace restart`")
        if qemu_pid != status.qemu_pid:
            return failed(f"{paths.qemu_pidfile.name} names pid {qemu_pid}, but the agent runs QEMU {status.qemu_pid}",
                          "`pinnace restart` (a `pinnace stop` first if it does not end)")
        if not qemu_ours:
            return failed(f"QEMU pid {qemu_pid} is not running or is not this instance's", "`pinnace restart`")
    elif status.state in ("stopped", "error") and qemu_ours:
        return failed(f"QEMU pid {qemu_pid} of this instance runs while its agent says {status.state}",
                      "`pinnace stop` ends it")
    elif status.state == "error":
        return failed(f"the agent reports an error: {status.reason or 'no reason given'}",
                      "`pinnace restart`; the details are in `pinnace logs`")
    detail = f"agent pid {status.agent_pid} answers ({status.state})"
    if status.qemu_pid:
        detail += f"; QEMU pid {status.qemu_pid} matches {paths.qemu_pidfile.name}"
    if notes:
        return warned(f"{detail}; {'; '.join(notes)}", "harmless: the next start rewrites it")
    return passed(detail)


# --- permissions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    path: Path
    kind: str  # "dir", "file" or "socket"
    forbidden: int  # mode bits that must be clear
    want: str  # the mode it should have, for the message


def expectations(ctx: Context) -> Iterator[Expectation]:
    """Every private path of the instance and how it must be: 0700 directories, owner-only keys,
    data disk and client sockets (the engine's, the agent's, virtiofsd's)."""
    paths = ctx.paths
    dirs = [*paths.all_dirs(), paths.keys_dir / paths.instance, paths.socket_dir]
    seen: set[Path] = set()
    for directory in dirs:
        if directory not in seen:
            seen.add(directory)
            yield Expectation(directory, "dir", 0o077, "0700")
    key_dir = paths.keys_dir / paths.instance
    for name in (CLIENT_KEY_NAME, HOST_KEY_NAME):
        yield Expectation(key_dir / name, "file", 0o077, "0600")
    yield Expectation(paths.data_disk, "file", 0o077, "0600")
    yield Expectation(paths.docker_socket, "socket", 0o077, "0600")
    yield Expectation(paths.control_socket, "socket", 0o077, "0600")
    for vfs in sorted(paths.socket_dir.glob("vfs*.sock")) if paths.socket_dir.is_dir() else []:
        yield Expectation(vfs, "socket", 0o077, "0600")
    # QEMU's monitor socket is made by QEMU with its umask's mode: its 0700 directory protects it.


def problem_of(item: Expectation, uid: int | None) -> str | None:
    """What is wrong with one path (None when it is missing: nothing to protect yet)."""
    try:
        info = os.lstat(item.path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{item.path}: cannot be examined ({exc.strerror})"
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return f"{item.path} is a symlink"
    expected = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "socket": stat.S_ISSOCK}[item.kind]
    if not expected(info.st_mode):
        return f"{item.path} is not a {'directory' if item.kind == 'dir' else item.kind}"
    if uid is not None and info.st_uid != uid:
        return f"{item.path} is owned by uid {info.st_uid}, not by you (uid {uid})"
    if mode & item.forbidden:
        return f"{item.path} is mode {mode:04o}, not {item.want}"
    return None


def fix_for(item: Expectation) -> str:
    if item.kind == "dir":
        return f"`chmod 700 {item.path}` (every pinnace command also tightens its own directories)"
    if item.kind == "socket":
        return f"`chmod 600 {item.path}`, or `pinnace restart` makes it again"
    return f"`chmod 600 {item.path}`"


def check_permissions(ctx: Context) -> Finding:
    if ctx.platform.windows:
        return skipped("POSIX modes do not apply on Windows (private files get owner-only ACLs when written)")
    from hypervisor.platform.path_safety import check_ancestry

    uid = current_uid()
    problems: list[tuple[str, str]] = []
    checked = 0
    ancestry_done: set[str] = set()
    for item in expectations(ctx):
        problem = problem_of(item, uid)
        if item.path.exists() or item.path.is_symlink():
            checked += 1
        if problem:
            problems.append((problem, fix_for(item)))
            continue
        if item.kind == "dir" and item.path.is_dir():
            try:
                check_ancestry(item.path, check_self=False)
            except NotPrivateError as exc:
                if str(exc) not in ancestry_done:
                    ancestry_done.add(str(exc))
                    problems.append((str(exc), "make that directory writable only by its owner (`chmod go-w`)"))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return failed(problems[0][0] + more, problems[0][1])
    if not checked:
        return passed("no private directory or file exists yet")
    return passed(f"{checked} private paths are owner-only (directories 0700; keys, data disk and sockets 0600); "
                  f"no unsafe parent")
