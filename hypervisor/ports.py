"""Published container ports made reachable on the host, with no Python in the IPv4 data path.

The agent follows the engine's events (through the forwarded engine channel), reads each running
container's port bindings and keeps QEMU user networking's host forwards (`hostfwd_add` /
`hostfwd_remove` through QMP's human-monitor-command) equal to them:

  -p 8080:80            host 127.0.0.1:8080 -> guest 10.0.2.15:8080 (dockerd's proxy or DNAT there)
  -p 0.0.0.0:8080:80    the same, or host 0.0.0.0:8080 with `expose_ports_on_all_interfaces`
  -p 127.0.0.1:8080:80  host 127.0.0.1:8080 -> guest 10.0.2.16:8080, which the guest's boot script
                        DNATs to its loopback, where dockerd's proxy listens for such a binding
  -p 8080:80/udp        the same with udp;  -p 80 / -P: the port the engine assigned

IPv6: QEMU 7.2 cannot forward from a host IPv6 address, so the agent listens on the host's ::1
itself (hypervisor/ipv6_relay.py; [::] with IPV6_V6ONLY when exposing to all interfaces):

  -p 8080:80            (the engine binds 0.0.0.0 and ::) host [::1]:8080 -> host 127.0.0.1:8080,
                        the IPv4 forward above, so `localhost` answers whichever family is tried
  -p [::1]:8080:80      no IPv4 forward (127.0.0.1:8080 stays free for others): host [::1]:8080 ->
  -p [::]:8080:80       host 127.0.0.1:Q (a free port the agent picks) -> guest 10.0.2.17:8080, where a
                        docker-proxy the agent runs over SSH relays to the guest's [::1]:8080

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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("pinnace.ports")

NETDEV = "net0"
GUEST_ADDR = "10.0.2.15"  # the guest's eth0 (QEMU's default guest address)
GUEST_LOOPBACK_ADDR = "10.0.2.16"  # DNATed to 127.0.0.1 by the guest (vmimage/guest/boot)
GUEST_RELAY_ADDR = "10.0.2.17"  # added at runtime by guest_relay_command: docker-proxy there -> guest ::1
HOP_HOST = "127.0.0.1"  # the host end of an IPv6-only binding's hidden IPv4 forward
DOCKER_PROXY_PATHS = ("/usr/bin/docker-proxy", "/usr/sbin/docker-proxy", "/usr/libexec/docker/docker-proxy")
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

    @property
    def address(self) -> str:
        return format_address(self.host_ip, self.host_port, self.proto)

    def describe(self) -> str:
        who = self.container_name or self.container_id[:12] or "?"
        hop = f" -> IPv6 guest relay {GUEST_RELAY_ADDR}:{self.guest_port}" if self.guest_ip == GUEST_RELAY_ADDR else ""
        return f"{self.address}{hop} -> container {who} port {self.container_port}/{self.proto}"


@dataclass(frozen=True)
class Ipv6Rule:
    """One host IPv6 listener for a container's IPv6 binding, relayed by the agent to an IPv4 forward.

    A twin (the binding has an IPv4 sibling on the same host port) relays to that sibling's forward,
    127.0.0.1:host_port; an IPv6-only binding relays to a hidden forward 127.0.0.1:Q -> guest
    10.0.2.17:guest_port, where a guest docker-proxy relays to guest_ip (the guest's ::1).
    """

    proto: str
    host_ip: str  # "::1", or "::" / the binding's own address with expose_ports_on_all_interfaces
    host_port: int
    guest_ip: str  # twin: the IPv4 forward's guest address; IPv6-only: the guest relay's target
    guest_port: int
    twin_host_ip: str = ""  # the IPv4 twin forward's host address; "" for an IPv6-only binding
    container_id: str = ""
    container_name: str = ""
    container_port: int = 0

    @property
    def key(self) -> Key:
        return (self.proto, self.host_ip, self.host_port)

    @property
    def twin_key(self) -> Key | None:
        return (self.proto, self.twin_host_ip, self.host_port) if self.twin_host_ip else None

    @property
    def guest_key(self) -> tuple[str, int]:
        """What the guest relay of an IPv6-only binding is known by: one per protocol and port."""
        return (self.proto, self.guest_port)

    @property
    def address(self) -> str:
        return format_address(self.host_ip, self.host_port, self.proto)

    def describe(self) -> str:
        who = self.container_name or self.container_id[:12] or "?"
        return f"{self.address} -> container {who} port {self.container_port}/{self.proto}"


def format_address(host_ip: str, port: int, proto: str = "") -> str:
    """127.0.0.1:80/tcp, [::1]:80/tcp (IPv6 in brackets, as URLs and `docker port` write it)."""
    text = f"[{host_ip}]:{port}" if ":" in host_ip else f"{host_ip}:{port}"
    return f"{text}/{proto}" if proto else text


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


def _ip(engine_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = (engine_ip or "").strip().strip("[]")
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None


def _is_ipv6(engine_ip: str) -> bool:
    addr = _ip(engine_ip)
    return addr is not None and addr.version == 6


def _published(inspect: Mapping[str, Any]) -> Iterator[tuple[int, str, list[tuple[str, int]]]]:
    """(container port, proto, [(HostIp, host port)]) of each published port QEMU can carry."""
    ports = ((inspect.get("NetworkSettings") or {}).get("Ports")) or {}
    for spec, bindings in sorted(ports.items()):
        if not bindings:
            continue  # exposed, not published
        number, _, proto = str(spec).partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp") or not number.isdigit():
            continue  # sctp: QEMU's user networking cannot forward it
        found = []
        for binding in bindings:
            host_port = str((binding or {}).get("HostPort") or "")
            if host_port.isdigit() and int(host_port) != 0:
                found.append((str(binding.get("HostIp") or ""), int(host_port)))
        yield int(number), proto, found


def rules_from_inspect(inspect: Mapping[str, Any], expose_all: bool) -> list[PortRule]:
    """The IPv4 forwards a container (engine inspect JSON) needs. IPv6 bindings get none (see
    ipv6_rules_from_inspect): a forward from 127.0.0.1 would take a host port the container never
    asked for there."""
    cid = str(inspect.get("Id") or "")
    name = str(inspect.get("Name") or "").lstrip("/")
    rules: dict[Key, PortRule] = {}
    for number, proto, bindings in _published(inspect):
        for engine_ip, host_port in bindings:
            if _is_ipv6(engine_ip):
                continue
            host_ip, guest_ip = host_address(engine_ip, expose_all)
            rule = PortRule(proto, host_ip, host_port, guest_ip, host_port, cid, name, number)
            previous = rules.get(rule.key)
            # 0.0.0.0 and 127.0.0.1 on one port: the IPv4 loopback binding is the one the guest serves.
            if previous is None or (previous.guest_ip == GUEST_ADDR and guest_ip == GUEST_LOOPBACK_ADDR):
                rules[rule.key] = rule
    return list(rules.values())


def ipv6_listen_address(engine_ip: str, expose_all: bool) -> str:
    """The host IPv6 address to listen on for an engine binding's HostIp ("" counts as ::)."""
    addr = _ip(engine_ip)
    if addr is None or addr.is_unspecified:
        return "::" if expose_all else "::1"
    if addr.is_loopback or not expose_all:
        return "::1"
    return str(addr)


def ipv6_rules_from_inspect(inspect: Mapping[str, Any], expose_all: bool) -> list[Ipv6Rule]:
    """The host IPv6 listeners a container needs: one per IPv6 binding (and per "" binding, which
    means every address). A binding whose port also has an IPv4 binding on 0.0.0.0 or 127.0.0.1 in
    the same port spec relays to that forward; one without gets its own way through the guest."""
    cid = str(inspect.get("Id") or "")
    name = str(inspect.get("Name") or "").lstrip("/")
    rules: dict[Key, Ipv6Rule] = {}
    for number, proto, bindings in _published(inspect):
        twins: dict[int, str] = {}  # host port -> the IPv4 binding's HostIp ("" first, then 0.0.0.0 ...)
        for engine_ip, host_port in bindings:
            addr = _ip(engine_ip)
            if addr is None or (addr.version == 4 and (addr.is_unspecified or addr.is_loopback)):
                twins.setdefault(host_port, engine_ip)
        for engine_ip, host_port in bindings:
            addr = _ip(engine_ip)
            if addr is not None and addr.version != 6:
                continue
            listen = ipv6_listen_address(engine_ip, expose_all)
            if host_port in twins:
                twin_host, guest_ip = host_address(twins[host_port], expose_all)
                rule = Ipv6Rule(proto, listen, host_port, guest_ip, host_port, twin_host, cid, name, number)
            else:
                target = "::1" if addr is None or addr.is_unspecified or addr.is_loopback else str(addr)
                rule = Ipv6Rule(proto, listen, host_port, target, host_port, "", cid, name, number)
            rules.setdefault(rule.key, rule)
    return list(rules.values())


def hop_rule(rule: Ipv6Rule, hop_port: int) -> PortRule:
    """The hidden IPv4 forward of an IPv6-only binding: host 127.0.0.1:hop_port -> guest relay."""
    return PortRule(rule.proto, HOP_HOST, hop_port, GUEST_RELAY_ADDR, rule.guest_port, rule.container_id,
                    rule.container_name, rule.container_port)


def adopted_hop_port(rule: Ipv6Rule, active: Mapping[Key, PortRule]) -> int | None:
    """The host port of a hidden forward QEMU already has for this binding (a previous agent's)."""
    for (proto, host_ip, port), forward in active.items():
        if proto == rule.proto and host_ip == HOP_HOST and forward.target == (GUEST_RELAY_ADDR, rule.guest_port):
            return port
    return None


def twin_relay_error(rule: Ipv6Rule, owners: Mapping[Key, PortRule], errors: Mapping[Key, str]) -> str | None:
    """Why a twin's relay must not run: its IPv4 forward failed, or belongs to another container
    (relaying there would hand this port's IPv6 clients to someone else); None when it may."""
    key = rule.twin_key
    if key is None:
        return None
    owner = owners.get(key)
    if owner is None:
        return f"{rule.address}: no IPv4 forward {format_address(HOP_HOST, rule.host_port, rule.proto)} to relay to"
    if owner.container_id != rule.container_id:
        return conflict_message(rule, f"also published by {owner.container_name}")
    return errors.get(key) or None


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


def conflict_message(rule: PortRule | Ipv6Rule, detail: str = "") -> str:
    text = (f"host port {rule.address} for container "
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


def add_failure_message(rule: PortRule | Ipv6Rule, detail: str, euid: int | None, first_unprivileged: int) -> str:
    """Why a host forward could not be added, with the way out: a privileged port is not "in use"
    (the sysctl, despite its name, governs IPv6 binds too)."""
    if euid not in (None, 0) and rule.host_port < first_unprivileged:
        return (f"host port {rule.address} for container "
                f"{rule.container_name or rule.container_id[:12]} needs privileges: ports below "
                f"{first_unprivileged} need root or CAP_NET_BIND_SERVICE; publish it on a higher port "
                f"(-p {rule.host_port + 8000 if rule.host_port + 8000 < 65536 else 8080}:{rule.container_port}), "
                f"or allow it with `sudo sysctl net.ipv4.ip_unprivileged_port_start={rule.host_port}`")
    return conflict_message(rule, detail)


def status_entry(rule: PortRule | Ipv6Rule, error: str = "", addresses: Iterable[str] = (),
                 via: str = "") -> dict[str, Any]:
    """One published binding in `status`: its host address (and its IPv6 twin's, in `addresses`),
    where it goes, and why it does not work. `via`: the hidden hop of an IPv6-only binding."""
    entry = {k: v for k, v in asdict(rule).items() if k not in ("container_id", "twin_host_ip")}
    entry["container_id"] = rule.container_id[:12]
    entry["error"] = error
    entry["addresses"] = [rule.address, *addresses]
    entry["via"] = via
    return entry


def relay_failure_message(rule: Ipv6Rule, exc: OSError, euid: int | None, first_unprivileged: int) -> str:
    """Why a host IPv6 listener could not be opened, as for an IPv4 forward."""
    if unrelayable(exc):
        return (f"host port {rule.address} for container {rule.container_name or rule.container_id[:12]} "
                f"cannot be opened: {exc.strerror or exc} (is IPv6 disabled on the host?)")
    return add_failure_message(rule, str(exc.strerror or exc), euid, first_unprivileged)


def unrelayable(exc: OSError) -> bool:
    """The host has no IPv6 loopback (IPv6 disabled): nothing to listen on, nothing to report for a
    twin (its IPv4 forward serves `localhost`)."""
    return exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)


# --- pure: the guest relay of an IPv6-only binding --------------------------------------------


def _relay_pids(proto: str = "", port: int = 0) -> str:
    """Shell: the pids of the guest relays (docker-proxy on 10.0.2.17), all or one protocol/port."""
    match = [r"$2 ~ /docker-proxy$/", "/ -host-ip " + GUEST_RELAY_ADDR.replace(".", r"\.") + " /"]
    if proto:
        match += [f"/ -proto {proto} /", f"/ -host-port {port} /"]
    return "ps -o pid,args | awk '" + " && ".join(match) + "{print $1}'"


def guest_relay_sweep_command() -> str:
    """Ends every guest relay (a previous agent's, whose session ended without killing it)."""
    return f"kill $({_relay_pids()}) 2>/dev/null; true"


def guest_relay_command(proto: str, port: int, target: str) -> str:
    """The guest end of an IPv6-only binding: the engine's own docker-proxy on 10.0.2.17:port relaying
    to [target]:port, for as long as this SSH session lasts (its end, a closed channel or a dead
    agent, is cat's EOF, which kills it). Prints `pid N`, then docker-proxy's readiness on fd 3:
    `0`, or `1` and why. (Without an fd 3 it takes fd 3 for its listener and closes it.) Its log
    goes nowhere: nobody reads the session after the start, and a full SSH window would stall it."""
    paths = " ".join(DOCKER_PROXY_PATHS)
    return (
        f"kill $({_relay_pids(proto, port)}) 2>/dev/null; "
        f"ip addr replace {GUEST_RELAY_ADDR}/32 dev eth0 || {{ echo 1; echo cannot add {GUEST_RELAY_ADDR}; exit 1; }}; "
        f"dp=; for c in {paths}; do [ -x $c ] && dp=$c && break; done; "
        '[ -n "$dp" ] || { echo 1; echo no docker-proxy in the guest; exit 1; }; '
        f'"$dp" -proto {proto} -host-ip {GUEST_RELAY_ADDR} -host-port {port} -container-ip {target} '
        f"-container-port {port} 3>&1 </dev/null 2>/dev/null & "
        'p=$!; echo "pid $p"; cat >/dev/null; kill $p 2>/dev/null'
    )


@dataclass(frozen=True)
class RelayStart:
    """What a guest relay said so far: its pid, then whether it listens (None: not yet) and why not."""

    pid: int | None = None
    ready: bool | None = None
    error: str = ""


def parse_relay_start(text: str) -> RelayStart:
    """The guest relay command's output so far (a line is complete only with its newline)."""
    pid: int | None = None
    lines = text.split("\n")
    for i, line in enumerate(lines):
        line = line.strip()
        if line.startswith("pid ") and line[4:].isdigit():
            pid = int(line[4:])
        elif line == "0" and i < len(lines) - 1:
            return RelayStart(pid, True)
        elif line == "1" and i < len(lines) - 1:
            why = " ".join(part.strip() for part in lines[i + 1:] if part.strip())
            return RelayStart(pid, False, why or "the guest relay did not start")
    return RelayStart(pid)


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


def free_loopback_port(proto: str) -> int:
    """A port the kernel says is free on 127.0.0.1 now (for a hidden hop; taken again by QEMU at once)."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((HOP_HOST, 0))
        return int(probe.getsockname()[1])
