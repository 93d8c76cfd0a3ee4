"""The checks that need the running VM: the engine through the forwarded socket, the guest clock,
DNS from the guest and from a container, host.docker.internal, Docker networks against the host's
routes, published ports, and the shared folders. Each skips, saying why, when the VM (or, for the
container checks, the engine) is not there to ask."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor import engine
from hypervisor.diagnose import engine_api, routes
from hypervisor.diagnose.context import Context
from hypervisor.diagnose.result import Finding, failed, one_line, passed, skipped, warned
from hypervisor.errors import PinnaceError

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 10.0
GUEST_TIMEOUT_S = 20.0
LOOKUP_S = 10  # one name lookup, in the guest or a container
PROBE_TIMEOUT_S = 90.0  # the probe container, start to exit (TCG is slow)
DNS_NAME = "registry-1.docker.io"  # what a `docker pull` from Docker Hub looks up first
HOST_ALIAS = "host.docker.internal"
BUSYBOX = "/usr/bin/busybox"  # the guest's (static)
CLOCK_WARN_S = 1.0
CLOCK_FAIL_S = 60.0  # beyond this TLS certificates and registry tokens start to fail
SHARE_FSTYPES = ("9p", "virtiofs")


# --- the engine ----------------------------------------------------------------------------------


def check_engine(ctx: Context) -> Finding:
    reason = ctx.vm_unavailable()
    if reason:
        ctx.engine_problem = reason
        return skipped(reason)
    address = ctx.engine_address()
    started = time.monotonic()
    try:
        code, body = engine.request(address, "GET", "/_ping", PING_TIMEOUT_S)
    except FileNotFoundError:
        problem = f"no engine socket at {address}"
    except TimeoutError:
        problem = f"no answer to /_ping within {PING_TIMEOUT_S:.0f} s through {address}"
    except ValueError:
        problem = f"the connection through {address} closed without an answer"
    except OSError as exc:
        problem = f"cannot reach the engine through {address}: {exc.strerror or exc}"
    else:
        ms = (time.monotonic() - started) * 1000
        if code == 200:
            ctx.engine_ok = True
            version = f"Docker {ctx.status.engine_version} " if ctx.status.engine_version else "the engine "
            return passed(f"{version}answered /_ping in {ms:.0f} ms through {address}")
        problem = f"/_ping answered HTTP {code}: {one_line(body.decode('utf-8', 'replace'), 120)}"
    ctx.engine_problem = "the engine is not answering"
    return failed(problem + _dockerd_note(ctx),
                  "`pinnace restart`; the engine's own log: `pinnace ssh -- tail -n 50 /var/log/dockerd.log`")


def _dockerd_note(ctx: Context) -> str:
    """Whether dockerd runs in the guest and its socket exists, to say which side is broken."""
    try:
        out = ctx.guest().run(f"{BUSYBOX} pidof dockerd; test -S /var/run/docker.sock && echo socket", 10.0)
    except PinnaceError as exc:
        log.info("cannot ask the guest about dockerd: %s", exc)
        return ""
    words = out.stdout.split()
    if not any(w.isdigit() for w in words):
        return " (dockerd is not running in the guest)"
    if "socket" not in words:
        return " (dockerd runs in the guest but /var/run/docker.sock is missing there)"
    return " (dockerd runs in the guest and its socket exists)"


def _needs_engine(ctx: Context) -> str | None:
    if ctx.engine_ok:
        return None
    return ctx.engine_problem or ctx.vm_unavailable() or "the engine is not answering"


# --- the clock -----------------------------------------------------------------------------------


def check_clock(ctx: Context) -> Finding:
    reason = ctx.vm_unavailable()
    if reason:
        return skipped(reason)
    offset, warning = ctx.status.clock_offset_s, ctx.status.clock_warning
    hint = "`pinnace restart`; the guest steps its clock onto QEMU's RTC every 10 s, the agent checks it every 20 s"
    if warning:
        return warned(warning, hint)
    if offset is None:
        return warned("the guest clock's offset has not been measured yet", "run `pinnace diagnose` again in 20 s")
    detail = f"the guest clock is {offset:+.3f} s from the host's"
    if abs(offset) >= CLOCK_FAIL_S:
        return failed(detail, hint)
    if abs(offset) >= CLOCK_WARN_S:
        return warned(detail, hint)
    return passed(detail)


# --- DNS -----------------------------------------------------------------------------------------


def host_resolves(name: str, timeout: float = LOOKUP_S) -> bool | None:
    """Whether the host resolves `name` (None: no answer in `timeout`)."""
    answer: list[bool] = []

    def ask() -> None:
        try:
            socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)
            answer.append(True)
        except (OSError, UnicodeError):
            answer.append(False)

    worker = threading.Thread(target=ask, name="diagnose-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    return answer[0] if answer else None


def _host_view(ctx: Context) -> bool | None:
    if "host_dns" not in ctx.memo:
        ctx.memo["host_dns"] = host_resolves(DNS_NAME)
    return ctx.memo["host_dns"]


def _dns_finding(ctx: Context, where: str, ok: bool, output: str, hint: str) -> Finding:
    if ok:
        return passed(f"{where} resolves {DNS_NAME}")
    said = one_line(output.replace("** ", ""), 160) or "no answer"
    if _host_view(ctx):
        return failed(f"{where} cannot resolve {DNS_NAME}, though the host can ({said})", hint)
    return warned(f"neither the host nor {where} can resolve {DNS_NAME} (offline?): {said}",
                  "check the host's network and DNS first")


def check_dns_guest(ctx: Context) -> Finding:
    reason = ctx.vm_unavailable()
    if reason:
        return skipped(reason)
    try:
        out = ctx.guest().run(f"{BUSYBOX} timeout {LOOKUP_S} {BUSYBOX} nslookup {DNS_NAME} 2>&1", GUEST_TIMEOUT_S)
    except PinnaceError as exc:
        return failed(f"cannot run a command in the guest: {one_line(exc)}", "`pinnace restart`")
    return _dns_finding(ctx, "the guest", out.ok, out.stdout,
                        "the guest's resolver forwards to QEMU's DNS relay (10.0.2.3), which asks the host's: "
                        "if the host resolves it and the guest still cannot, `pinnace restart`")


def _probe(ctx: Context) -> dict[str, tuple[int, str]] | str:
    """The probe container's lookups (name -> (status, output)), or why it could not run; run once."""
    if "probe" not in ctx.memo:
        try:
            run = engine_api.run_probe(ctx.engine_address(),
                                       engine_api.lookup_script([DNS_NAME, HOST_ALIAS], LOOKUP_S),
                                       PROBE_TIMEOUT_S)
            found = engine_api.parse_lookups(run.output)
            ctx.memo["probe"] = found if found else f"the probe container printed nothing (exit {run.exit_code})"
        except PinnaceError as exc:
            ctx.memo["probe"] = one_line(exc)
    return ctx.memo["probe"]


def check_dns_container(ctx: Context) -> Finding:
    reason = _needs_engine(ctx)
    if reason:
        return skipped(reason)
    probe = _probe(ctx)
    if isinstance(probe, str):
        return failed(f"cannot run a probe container: {probe}", "`pinnace restart`; see `pinnace logs`")
    code, output = probe.get(DNS_NAME, (-1, "no answer"))
    return _dns_finding(ctx, "a container", code == 0, output,
                        "containers ask the guest's resolver (the default bridge copies its resolv.conf; user "
                        "networks go through Docker's DNS): check the guest's DNS row, then `pinnace restart`")


def check_host_alias(ctx: Context) -> Finding:
    reason = _needs_engine(ctx)
    if reason:
        return skipped(reason)
    probe = _probe(ctx)
    if isinstance(probe, str):
        return skipped(f"no probe container: {probe}")
    code, output = probe.get(HOST_ALIAS, (-1, ""))
    if code == 0:
        return passed(f"{HOST_ALIAS} resolves in a container")
    workaround = f"`--add-host {HOST_ALIAS}:10.0.2.2` reaches the host's loopback from a container"
    if not _guest_provides_alias(ctx):
        return skipped(f"not provided yet: this image does not define {HOST_ALIAS}", f"meanwhile {workaround}")
    return failed(f"{HOST_ALIAS} does not resolve in a container, though the guest's DNS (dnsmasq) defines it: "
                  f"{one_line(output.replace('** ', ''), 160) or 'no answer'}",
                  f"`pinnace restart` (init respawns dnsmasq); meanwhile {workaround}")


def _guest_provides_alias(ctx: Context) -> bool:
    """Whether the guest image answers host.docker.internal itself (its dnsmasq.conf names it)."""
    try:
        out = ctx.guest().run(f"grep -qs {HOST_ALIAS} /etc/dnsmasq.conf && echo provided", 10.0)
    except PinnaceError as exc:
        log.info("cannot ask the guest about %s: %s", HOST_ALIAS, exc)
        return False
    return "provided" in out.stdout


# --- networks against the host's routes ---------------------------------------------------------


def host_routes() -> list[routes.Route]:
    """The host's IPv4 and IPv6 routes (Linux: `ip -j route`, else /proc/net)."""
    found: list[routes.Route] = []
    ip = shutil.which("ip")
    for family, proc_file, parse in ((4, "/proc/net/route", routes.parse_proc_net_route),
                                     (6, "/proc/net/ipv6_route", routes.parse_proc_ipv6_route)):
        if ip:
            try:
                proc = subprocess.run([ip, "-j", f"-{family}", "route", "show"], capture_output=True, text=True,
                                      timeout=5, stdin=subprocess.DEVNULL)
                if proc.returncode == 0 and proc.stdout.strip().startswith("["):
                    found += routes.parse_ip_json(proc.stdout, family)
                    continue
            except (OSError, subprocess.SubprocessError) as exc:
                log.info("ip route: %s", exc)
        try:
            found += parse(Path(proc_file).read_text())
        except OSError:
            pass
    return found


def check_networks(ctx: Context) -> Finding:
    reason = _needs_engine(ctx)
    if reason:
        return skipped(reason)
    if ctx.platform.os_name != "linux":
        return skipped(f"reading the host's routes is not supported on {ctx.platform.os_name} yet")
    try:
        networks = engine_api.call(ctx.engine_address(), "GET", "/networks")
    except PinnaceError as exc:
        return failed(f"cannot list the engine's networks: {one_line(exc)}", "`pinnace restart`")
    subnets = routes.docker_subnets(networks if isinstance(networks, list) else [])
    host = host_routes()
    found = routes.overlaps(subnets, host)
    if not found:
        return passed(f"{len(subnets)} Docker subnets, none inside the host's {len(host)} routes")
    vpn = [o for o in found if not o.host_docker]
    first = (vpn or found)[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    hint = (f"containers on {first.subnet.network} cannot reach {first.route.dst} behind the host: recreate it on "
            f"another subnet (`docker network create --subnet 192.168.200.0/24 ...`)")
    if first.subnet.network == "bridge":
        hint = (f"the default bridge's {first.subnet.subnet} hides {first.route.dst}: put the containers that need "
                f"it on a network with another subnet (`docker network create --subnet 192.168.200.0/24 ...`)")
    if vpn:
        return failed(first.describe() + more, hint)
    return warned(first.describe() + more + " (a Docker Engine on the host itself)", hint)


# --- published ports -----------------------------------------------------------------------------


def check_ports(ctx: Context) -> Finding:
    reason = ctx.vm_unavailable()
    if reason:
        return skipped(reason)
    entries = ctx.status.port_forwards or []
    broken = [e for e in entries if e.get("error")]
    if broken:
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        return failed(one_line(broken[0]["error"], 300) + more,
                      "stop what holds that host port, or publish the container on another one (`-p OTHER:PORT`)")
    if not entries:
        return passed("no published ports")
    return passed(f"{len(entries)} published ports forwarded from the host")


# --- shared folders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_proc_mounts(text: str) -> list[Mount]:
    """/proc/mounts lines (octal escapes for space, tab, newline and backslash undone)."""
    mounts = []
    for line in text.splitlines():
        cols = line.split(" ")
        if len(cols) >= 4:
            mounts.append(Mount(_unescape(cols[0]), _unescape(cols[1]), cols[2], tuple(cols[3].split(","))))
    return mounts


def share_problems(shares: list[dict[str, Any]], mounts: list[Mount], answers: dict[str, bool],
                   is_dir: Callable[[str], bool] = os.path.isdir) -> list[str]:
    """What is wrong with each share: gone on the host, not mounted (or not a share) in the VM,
    writable where it should be read-only, or not answering in the VM."""
    by_target = {m.target: m for m in mounts}  # the last mount at a path is the one seen
    problems = []
    for share in shares:
        path = str(share.get("path") or "")
        if not is_dir(path):
            problems.append(f"the shared folder {path} no longer exists on the host")
            continue
        mount = by_target.get(path)
        if mount is None:
            problems.append(f"{path} is not mounted in the VM")
        elif mount.fstype not in SHARE_FSTYPES:
            problems.append(f"{path} is a {mount.fstype} mount in the VM, not the shared folder")
        elif share.get("read_only") and "ro" not in mount.options:
            problems.append(f"{path} should be read-only but is mounted read-write in the VM")
        elif answers.get(path) is False:
            problems.append(f"{path} is mounted in the VM but does not answer (its {mount.fstype} server is gone?)")
    return problems


def check_shares(ctx: Context) -> Finding:
    reason = ctx.vm_unavailable()
    if reason:
        return skipped(reason)
    shares = [s for s in ctx.status.shares or [] if s.get("path")]
    if not shares:
        return passed("no shared folders")
    paths = [str(s["path"]) for s in shares]
    script = "cat /proc/mounts; " + "; ".join(
        f"{BUSYBOX} timeout 5 {BUSYBOX} ls -d {shlex.quote(p)} >/dev/null 2>&1; echo \"@@share $? {i}\""
        for i, p in enumerate(paths))
    try:
        out = ctx.guest().run(script, GUEST_TIMEOUT_S)
    except PinnaceError as exc:
        return failed(f"cannot run a command in the guest: {one_line(exc)}", "`pinnace restart`")
    answers: dict[str, bool] = {}
    lines = []
    for line in out.stdout.splitlines():
        if line.startswith("@@share "):
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) < len(paths):
                answers[paths[int(parts[2])]] = parts[1] == "0"
        else:
            lines.append(line)
    problems = share_problems(shares, parse_proc_mounts("\n".join(lines)), answers)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return failed(problems[0] + more, "restore the folder, or change the list with `pinnace config set shares "
                                          "...`; then `pinnace restart`")
    transports = sorted({str(s.get("transport") or "?") for s in shares})
    return passed(f"{len(shares)} shared folders mounted ({', '.join(transports)}): {', '.join(paths)}")
