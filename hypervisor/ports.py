"""Published container ports made reachable on the host, with no Python in the data path.

The agent follows the engine's events (through the forwarded engine channel), reads each running
container's port bindings and keeps QEMU user networking's host forwards (`hostfwd_add` /
`hostfwd_remove` through QMP's human-monitor-command) equal to them:

  -p 8080:80            host 127.0.0.1:8080 -> guest 10.0.2.15:8080 (dockerd's proxy or DNAT there)
  -p 0.0.0.0:8080:80    the same, or host 0.0.0.0:8080 with `expose_ports_on_all_interfaces`
  -p 127.0.0.1:8080:80  host 127.0.0.1:8080 -> guest 10.0.2.16:8080, which the guest's boot script
                        DNATs to its loopback, where dockerd's proxy listens for such a binding
  -p 8080:80/udp        the same with udp;  -p 80 / -P: the port the engine assigned

The guest port is always the engine's published host port. What QEMU forwards now is read back
from `info usernet`, so an agent that restarts adopts (and corrects) what its predecessor left.
A host port that is taken is reported in the status (`error`) and the log, never skipped silently.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import re
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("pinnace.ports")

NETDEV = "net0"
GUEST_ADDR = "10.0.2.15"  # the guest's eth0 (QEMU's default guest address)
GUEST_LOOPBACK_ADDR = "10.0.2.16"  # DNATed to 127.0.0.1 by the guest (vmimage/guest/boot)
EVENT_FILTERS = {"type": ["container", "network"]}
CONTAINER_ACTIONS = frozenset({"start", "stop", "die", "kill", "destroy", "pause", "unpause", "restart"})
NETWORK_ACTIONS = frozenset({"connect", "disconnect"})
DEBOUNCE_S = 0.15
RETRY_FAILED_S = 15.0
RECONNECT_S = (0.5, 1.0, 2.0, 5.0)

Key = tuple[str, str, int]  # (protocol, host address, host port)


@dataclass(frozen=True)
class PortRule:
    """One host forward: host_ip:host_port/proto -> guest_ip:guest_port, for one container port."""

    proto: str
    host_ip: str
    host_port: int
    guest_ip: str
    guest_port: int
    container_id: str = ""
    container_name: str = ""
    container_port: int = 0

    @property
    def key(self) -> Key:
        return (self.proto, self.host_ip, self.host_port)

    @property
    def target(self) -> tuple[str, int]:
        return (self.guest_ip, self.guest_port)

    def add_command(self) -> str:
        return f"hostfwd_add {NETDEV} {self.proto}:{self.host_ip}:{self.host_port}-{self.guest_ip}:{self.guest_port}"

    def remove_command(self) -> str:
        return f"hostfwd_remove {NETDEV} {self.proto}:{self.host_ip}:{self.host_port}"

    def describe(self) -> str:
        who = self.container_name or self.container_id[:12] or "?"
        return (f"{self.host_ip}:{self.host_port}/{self.proto} -> container {who} "
                f"port {self.container_port}/{self.proto}")


# --- pure: bindings -> rules ------------------------------------------------------------------


def host_address(engine_ip: str, expose_all: bool) -> tuple[str, str]:
    """(host address to listen on, guest address to forward to) for an engine binding's HostIp."""
    text = (engine_ip or "").strip().strip("[]")
    try:
        addr = ipaddress.ip_address(text) if text else None
    except ValueError:
        addr = None
    if addr is None or addr.is_unspecified:
        return ("0.0.0.0" if expose_all else "127.0.0.1", GUEST_ADDR)
    if addr.is_loopback:
        return ("127.0.0.1", GUEST_LOOPBACK_ADDR)
    # A specific non-loopback address: honoured only when exposing beyond loopback is allowed.
    if expose_all and addr.version == 4:
        return (str(addr), GUEST_ADDR)
    return ("127.0.0.1", GUEST_ADDR)


def rules_from_inspect(inspect: Mapping[str, Any], expose_all: bool) -> list[PortRule]:
    """The forwards a container (engine inspect JSON) needs; IPv4/IPv6 twins collapse into one."""
    cid = str(inspect.get("Id") or "")
    name = str(inspect.get("Name") or "").lstrip("/")
    ports = ((inspect.get("NetworkSettings") or {}).get("Ports")) or {}
    rules: dict[Key, PortRule] = {}
    for spec, bindings in sorted(ports.items()):
        if not bindings:
            continue  # exposed, not published
        number, _, proto = str(spec).partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp") or not number.isdigit():
            continue  # sctp: QEMU's user networking cannot forward it
        for binding in bindings:
            host_port = str((binding or {}).get("HostPort") or "")
            if not host_port.isdigit() or int(host_port) == 0:
                continue
            host_ip, guest_ip = host_address(str(binding.get("HostIp") or ""), expose_all)
            rule = PortRule(proto, host_ip, int(host_port), guest_ip, int(host_port), cid, name, int(number))
            previous = rules.get(rule.key)
            # ::1 and 127.0.0.1 twins: the IPv4 loopback binding is the one the guest proxy serves.
            if previous is None or (previous.guest_ip == GUEST_ADDR and guest_ip == GUEST_LOOPBACK_ADDR):
                rules[rule.key] = rule
    return list(rules.values())


# --- pure: what QEMU forwards now -------------------------------------------------------------

_USERNET_LINE = re.compile(
    r"^\s*(TCP|UDP)\[HOST_FORWARD\]\s+-?\d+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)", re.MULTILINE)


def parse_usernet(text: str, ignore: Iterable[Key] = ()) -> dict[Key, PortRule]:
    """The host forwards in `info usernet` output (minus `ignore`, e.g. the SSH forward)."""
    skip = set(ignore)
    active: dict[Key, PortRule] = {}
    for proto, src, sport, dst, dport in _USERNET_LINE.findall(text):
        host_ip = "0.0.0.0" if src in ("*", "") else src
        rule = PortRule(proto.lower(), host_ip, int(sport), dst, int(dport))
        if rule.key not in skip:
            active[rule.key] = rule
    return active


@dataclass
class Plan:
    add: list[PortRule] = field(default_factory=list)
    remove: list[PortRule] = field(default_factory=list)
    clashes: list[tuple[PortRule, PortRule]] = field(default_factory=list)  # (loser, winner)


def diff(desired: Iterable[PortRule], active: Mapping[Key, PortRule]) -> Plan:
    """Remove what is active and not desired (or points elsewhere), add what is missing.

    Two containers wanting the same host address and port: the first keeps it, the other clashes.
    """
    plan = Plan()
    wanted: dict[Key, PortRule] = {}
    for rule in desired:
        if rule.key in wanted:
            plan.clashes.append((rule, wanted[rule.key]))
        else:
            wanted[rule.key] = rule
    for key, rule in active.items():
        if key not in wanted or wanted[key].target != rule.target:
            plan.remove.append(rule)
    removed = {r.key for r in plan.remove}
    for key, rule in wanted.items():
        if key not in active or key in removed:
            plan.add.append(rule)
    return plan


def add_failed(output: str) -> bool:
    """hostfwd_add prints nothing on success and the reason on failure."""
    return bool(output.strip())


def remove_failed(output: str) -> bool:
    return "removed" not in output


def conflict_message(rule: PortRule, detail: str = "") -> str:
    text = (f"host port {rule.host_ip}:{rule.host_port}/{rule.proto} for container "
            f"{rule.container_name or rule.container_id[:12]} (port {rule.container_port}/{rule.proto}) "
            f"is already in use on the host")
    return f"{text}: {detail}" if detail else text


UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def first_unprivileged_port(sysctl: Path = UNPRIVILEGED_PORT_START) -> int:
    """Below this port a bind needs root or CAP_NET_BIND_SERVICE (Linux's sysctl; 1024 elsewhere)."""
    try:
        return int(sysctl.read_text().strip())
    except (OSError, ValueError):
        return 1024


def add_failure_message(rule: PortRule, detail: str, euid: int | None, first_unprivileged: int) -> str:
    """Why a host forward could not be added, with the way out: a privileged port is not "in use"."""
    if euid not in (None, 0) and rule.host_port < first_unprivileged:
        return (f"host port {rule.host_ip}:{rule.host_port}/{rule.proto} for container "
                f"{rule.container_name or rule.container_id[:12]} needs privileges: ports below "
                f"{first_unprivileged} need root or CAP_NET_BIND_SERVICE; publish it on a higher port "
                f"(-p {rule.host_port + 8000 if rule.host_port + 8000 < 65536 else 8080}:{rule.container_port}), "
                f"or allow it with `sudo sysctl net.ipv4.ip_unprivileged_port_start={rule.host_port}`")
    return conflict_message(rule, detail)


def status_entry(rule: PortRule, error: str = "") -> dict[str, Any]:
    entry = {k: v for k, v in asdict(rule).items() if k != "container_id"}
    entry["container_id"] = rule.container_id[:12]
    entry["error"] = error
    return entry


# --- pure: the engine's event stream ----------------------------------------------------------


def events_path() -> str:
    return "/events?filters=" + urllib.parse.quote(json.dumps(EVENT_FILTERS, separators=(",", ":")))


def split_events(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """Complete JSON lines from the stream (HTTP/1.0: no chunking) and the unfinished rest."""
    *lines, rest = buffer.split(b"\n")
    events = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            log.debug("unparsable event line %r", line[:80])
            continue
        if isinstance(value, dict):
            events.append(value)
    return events, rest


def relevant(event: Mapping[str, Any]) -> bool:
    kind = event.get("Type")
    action = str(event.get("Action") or event.get("status") or "")
    if kind == "container":
        return action in CONTAINER_ACTIONS
    if kind == "network":
        return action in NETWORK_ACTIONS
    return False


def bind_sources(inspect: Mapping[str, Any]) -> list[str]:
    """The host-side sources of a container's bind mounts (inspect JSON)."""
    return [str(m["Source"]) for m in inspect.get("Mounts") or [] if m.get("Type") == "bind" and m.get("Source")]


def host_port_busy(proto: str, host_ip: str, port: int) -> bool:
    """UDP pre-check: QEMU binds UDP forwards with SO_REUSEADDR, so a clash could go unnoticed."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((host_ip, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
