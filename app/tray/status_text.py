"""Human text for a Status: the menu's status line, the tooltip and the docker connection hints.

Kept free of Qt so the exact wording is unit-tested and shared by the menu and the tooltip.
"""

from __future__ import annotations

from app.dockerctx import context_name
from hypervisor.accel import DISPLAY as ACCEL_DISPLAY
from hypervisor.control import Status

STATE_LABELS = {
    "stopped": "Stopped",
    "starting": "Starting…",
    "running": "Running",
    "stopping": "Stopping…",
    "paused": "Paused",
    "error": "Error",
}
# States whose reason is the news (why it failed, why QEMU paused the VM), shown like an error's.
REASON_STATES = ("error", "paused")
MAX_REASON = 80
CLOCK_WARNING_MAX = 120  # the agent's text names the occasion and the error: more than a reason's line


def short_version(version: str) -> str:
    """`26.1.3` -> `26.1`: the patch level is noise in a one-line status."""
    parts = version.strip().split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else version.strip()


def memory_text(mib: int) -> str:
    if mib < 1024:
        return f"{mib} MiB"
    gib = mib / 1024
    return f"{gib:.0f} GiB" if gib == int(gib) else f"{gib:.1f} GiB"


def size_text(num_bytes: int | float) -> str:
    """Decimal-free for small sizes, one decimal above 1 KiB; binary units like the rest of the app."""
    value = float(max(num_bytes, 0))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def one_line(text: str, limit: int = MAX_REASON) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def accel_label(accel: str) -> str:
    return ACCEL_DISPLAY.get(accel, accel.upper())


def resources_text(status: Status) -> str:
    parts = []
    if status.cpus:
        parts.append(f"{status.cpus} CPU" + ("s" if status.cpus != 1 else ""))
    if status.memory_mib:
        parts.append(memory_text(status.memory_mib))
    return ", ".join(parts)


def status_line(status: Status | None) -> str:
    """E.g. `Running · KVM · Docker 26.1 · 2 CPUs, 4 GiB`; None means no agent is running."""
    if status is None:
        return "Stopped"
    label = STATE_LABELS.get(status.state, status.state.capitalize())
    if status.state in REASON_STATES:
        reason = one_line(status.reason)
        return f"{label}: {reason}" if reason else label
    if status.state == "starting":
        return f"{label} {status.stage}".strip() if status.stage else label
    if status.state != "running":
        return label
    parts = [label]
    if status.accel:
        parts.append(accel_label(status.accel))
    if status.engine_version:
        parts.append(f"Docker {short_version(status.engine_version)}")
    res = resources_text(status)
    if res:
        parts.append(res)
    return " · ".join(parts)


def clock_text(offset_s: float) -> str:
    """`guest +0.012 s from host` (+ = the guest is ahead); never `-0.000`."""
    return f"guest {round(offset_s, 3) + 0.0:+.3f} s from host"


def clock_lines(status: Status | None) -> list[str]:
    """A running VM's guest clock: its last measured offset, and why it could not be set."""
    if status is None or status.state != "running":
        return []
    lines = []
    if status.clock_offset_s is not None:
        lines.append(f"Clock: {clock_text(status.clock_offset_s)}")
    if status.clock_warning.strip():
        lines.append(f"⚠ {one_line(status.clock_warning, CLOCK_WARNING_MAX)}")
    return lines


def tooltip(status: Status | None, instance: str = "default") -> str:
    """State, accelerator, engine version and guest clock, one per line."""
    title = "Pinnace" if instance == "default" else f"Pinnace ({instance})"
    state = STATE_LABELS.get(status.state, status.state) if status else "Stopped"
    lines = [f"{title}: {state}"]
    if status is not None:
        if status.accel:
            lines.append(f"Accelerator: {accel_label(status.accel)}")
        if status.engine_version:
            lines.append(f"Docker {status.engine_version}")
        if status.state in REASON_STATES and status.reason:
            lines.append(one_line(status.reason))
        lines += clock_lines(status)
    return "\n".join(lines)


def context_command(instance: str) -> str:
    return f"docker context use {context_name(instance)}"


def docker_host(docker_socket: str, host_os: str = "linux") -> str:
    """DOCKER_HOST for the forwarded engine socket (a named pipe on Windows)."""
    if host_os == "windows":
        pipe = docker_socket.replace("\\", "/")
        return "npipe://" + pipe
    return "unix://" + docker_socket
