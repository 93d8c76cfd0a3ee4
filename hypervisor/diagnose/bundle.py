"""The support bundle: one .tar.gz with what a maintainer needs to see what went wrong, and no
secrets.

It holds versions (Pinnace, QEMU, Python, OS), the status, the settings, the check results, the
agent's, serial console's, QEMU's and virtiofsd's logs (the last 2 MiB of each), the image
manifest, the engine's `docker info` and `docker ps -a` (as the API answers them), and the guest's
dmesg and dockerd log. Nothing is ever read from the instance's keys directory, and every member is
scrubbed (scrub.py) before it is written: private keys, SSH key lines, registry credentials and
tokens are replaced. The archive is owner-only (0600) and written atomically.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform as pyplatform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from hypervisor import settings as settings_mod
from hypervisor.diagnose import checks_vm, engine_api, report, runner
from hypervisor.diagnose.context import Context
from hypervisor.diagnose.result import CheckResult, one_line
from hypervisor.diagnose.scrub import find_secrets, scrub_text
from hypervisor.errors import PinnaceError
from hypervisor.paths import Paths
from hypervisor.qemu_binary import find_qemu
from vmimage import locations

log = logging.getLogger(__name__)

LOG_LIMIT = 2 << 20  # the last 2 MiB of each log
GUEST_TIMEOUT_S = 30.0
Progress = Callable[[str], None]


def default_name(instance: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"pinnace-diagnose-{instance}-{stamp}.tar.gz"


def tail_bytes(path: Path, limit: int = LOG_LIMIT) -> bytes:
    """The last `limit` bytes of a file, starting at a line; a note says how much was left out."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size <= limit:
            f.seek(0)
            return f.read()
        f.seek(size - limit)
        data = f.read(limit)
    cut = data.find(b"\n")
    data = data[cut + 1:] if 0 <= cut < len(data) - 1 else data
    return f"[... the first {size - len(data)} bytes are left out ...]\n".encode() + data


def under(path: Path, directory: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(directory))
    except (OSError, ValueError):
        return False


def pinnace_version() -> str:
    try:
        return metadata.version("pinnace")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {one_line(exc)}"
    return one_line(proc.stdout or proc.stderr) or f"exit code {proc.returncode}"


class Collector:
    """The bundle's members, each scrubbed as it is added; never reads the keys directory."""

    def __init__(self, paths: Paths, progress: Progress) -> None:
        self.paths = paths
        self.progress = progress
        self.members: dict[str, bytes] = {}
        self.problems: list[str] = []

    def add(self, name: str, content: str | bytes) -> None:
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        clean = scrub_text(text)
        left = find_secrets(clean)
        if left:  # cannot happen (every rule is idempotent): drop the member rather than risk it
            self.problems.append(f"{name}: left out, it still looked like it held a secret ({', '.join(left)})")
            return
        self.members[name] = clean.encode("utf-8")

    def add_json(self, name: str, value: Any) -> None:
        self.add(name, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")

    def add_file(self, name: str, path: Path, limit: int = LOG_LIMIT) -> None:
        if under(path, self.paths.keys_dir):
            self.problems.append(f"{name}: refused, {path} is in the keys directory")
            return
        try:
            self.add(name, tail_bytes(path, limit))
        except FileNotFoundError:
            return
        except OSError as exc:
            self.problems.append(f"{name}: cannot read {path}: {exc.strerror or exc}")

    def attempt(self, what: str, fn: Callable[[], None]) -> None:
        """Run one collecting step; whatever it raises is a line in problems.txt, not a lost bundle."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the bundle is written whatever one part raised
            log.info("bundle: %s failed", what, exc_info=True)
            self.problems.append(f"{what}: {one_line(exc) or type(exc).__name__}")


def _versions(ctx: Context) -> dict[str, Any]:
    try:
        qemu = find_qemu(ctx.arch(), ctx.platform.os_name, ctx.env, shutil.which, Path.is_file)
        qemu_line = _first_line([str(qemu), "--version"])
    except PinnaceError as exc:
        qemu_line = f"not found: {one_line(exc)}"
    try:
        qemu_img_line = _first_line([str(ctx.qemu_img()), "--version"])
    except PinnaceError as exc:
        qemu_img_line = f"not found: {one_line(exc)}"
    return {
        "pinnace": pinnace_version(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "os": pyplatform.platform(),
        "host_os": ctx.platform.os_name,
        "machine": pyplatform.machine(),
        "guest_arch": ctx.arch(),
        "qemu": qemu_line,
        "qemu_img": qemu_img_line,
        "engine": ctx.status.engine_version,
    }


def _settings_text(paths: Paths) -> str:
    try:
        return paths.settings_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        defaults = settings_mod.Settings.defaults(settings_mod.HostFacts.detect())
        return "# no settings file: these are the defaults\n" + settings_mod.to_toml(defaults)


def _logs(c: Collector) -> None:
    log_dir = c.paths.log_dir
    names = ["agent.log", "agent.stderr.log", "serial.log", "qemu.log"]
    extra = sorted(p.name for p in log_dir.glob("virtiofsd-*.log")) if log_dir.is_dir() else []
    for name in names + extra:
        c.add_file(f"logs/{name}", log_dir / name)


def _image(c: Collector, ctx: Context) -> None:
    directory = locations.default_image_dir(ctx.arch())
    c.add_file("image/manifest.json", directory / "manifest.json")


def _engine(c: Collector, ctx: Context) -> None:
    address = ctx.engine_address()
    c.add_json("engine/info.json", engine_api.call(address, "GET", "/info"))
    c.add_json("engine/containers.json", engine_api.call(address, "GET", "/containers/json?all=1"))


def _guest(c: Collector, ctx: Context) -> None:
    guest = ctx.guest()
    bb = checks_vm.BUSYBOX
    for name, command in (("guest/dmesg.txt", f"{bb} dmesg"),
                          ("guest/dockerd.log", f"{bb} tail -c {LOG_LIMIT} /var/log/dockerd.log"),
                          ("guest/mounts.txt", "cat /proc/mounts"),
                          ("guest/processes.txt", f"{bb} ps -o pid,ppid,user,vsz,stat,args")):
        try:
            out = guest.run(command, GUEST_TIMEOUT_S, LOG_LIMIT)
            c.add(name, out.stdout + (f"\n[stderr]\n{out.stderr}" if out.stderr.strip() else ""))
        except PinnaceError as exc:
            c.problems.append(f"{name}: {one_line(exc)}")


README = """Pinnace support bundle for instance '{instance}', made {made} by pinnace {version}.

versions.json         Pinnace, QEMU, Python and the OS
status.json           the instance's status (from its agent, or its last words)
settings.toml         the instance's settings
checks.json           the results of `pinnace diagnose`
logs/                 the agent's, the serial console's, QEMU's and virtiofsd's logs (last 2 MiB each)
image/manifest.json   the guest image's manifest
engine/               `docker info` and `docker ps -a`, as the engine API answers them
guest/                the guest's dmesg, dockerd log (last 2 MiB), mounts and processes
problems.txt          what could not be collected, and why

Never included: anything from the instance's keys directory. Every file was scrubbed of private
keys, SSH key lines, registry credentials, Authorization headers, tokens and passwords.
"""


def collect(paths: Paths, progress: Progress) -> tuple[dict[str, bytes], list[CheckResult]]:
    """The scrubbed members (name -> bytes) and the check results."""
    c = Collector(paths, progress)
    progress("running the checks")
    ctx = Context.gather(paths)
    try:
        results = []
        for check in runner.CHECKS:
            result = runner.run_one(check, ctx)
            results.append(result)
            progress(f"{result.outcome}  {result.title}")
        c.add("checks.json", report.to_json(results, paths.instance) + "\n")
        progress("collecting versions, status and settings")
        c.attempt("versions.json", lambda: c.add_json("versions.json", _versions(ctx)))
        c.add_json("status.json", {**ctx.status.to_dict(), "agent_answered": ctx.agent_answers})
        c.attempt("settings.toml", lambda: c.add("settings.toml", _settings_text(paths)))
        progress("collecting the logs")
        c.attempt("logs", lambda: _logs(c))
        c.attempt("image/manifest.json", lambda: _image(c, ctx))
        if ctx.engine_ok:
            progress("asking the engine (docker info, docker ps -a)")
            c.attempt("engine", lambda: _engine(c, ctx))
        else:
            c.problems.append(f"engine/: not asked ({ctx.engine_problem or 'the engine is not answering'})")
        if ctx.vm_unavailable() is None:
            progress("asking the guest (dmesg, dockerd log, mounts)")
            c.attempt("guest", lambda: _guest(c, ctx))
        else:
            c.problems.append(f"guest/: not asked ({ctx.vm_unavailable()})")
    finally:
        ctx.close()
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    c.add("README.txt", README.format(instance=paths.instance, made=made, version=pinnace_version()))
    if c.problems:
        c.add("problems.txt", "\n".join(c.problems) + "\n")
    return c.members, results


def write_archive(dest: Path, top: str, members: dict[str, bytes]) -> None:
    """`dest` (a .tar.gz, 0600) holding `members` under `top/`, replaced atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            now = int(time.time())
            for name, data in sorted(members.items()):
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), now, 0o600
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bundle(paths: Paths, dest: Path | None = None, on_progress: Progress | None = None) -> Path:
    """Collect, scrub and write the bundle; returns where it is. `dest` defaults to
    ./pinnace-diagnose-<instance>-<UTC timestamp>.tar.gz; `on_progress` gets a line per step."""
    progress = on_progress or (lambda line: log.info("bundle: %s", line))
    target = Path(dest) if dest is not None else Path.cwd() / default_name(paths.instance)
    if target.is_dir():
        target = target / default_name(paths.instance)
    members, _ = collect(paths, progress)
    top = re.sub(r"\.(tar\.gz|tgz)$", "", target.name) or "pinnace-diagnose"
    progress(f"writing {target}")
    write_archive(target, top, members)
    return target
