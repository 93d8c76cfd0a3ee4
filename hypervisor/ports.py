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

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import re
import socket
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hypervisor import engine
from hypervisor.errors import ForwardError, PinnaceError

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


def host_port_busy(proto: str, host_ip: str, port: int) -> bool:
    """UDP pre-check: QEMU binds UDP forwards with SO_REUSEADDR, so a clash could go unnoticed."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((host_ip, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


# --- I/O: the publisher -----------------------------------------------------------------------

Hmp = Callable[[str], Awaitable[str]]
OpenChannel = Callable[[], Any]  # -> a stream with sendall/recv/close (a paramiko Channel)


class EngineClient:
    """Blocking reads of the engine API, one fresh channel per request."""

    def __init__(self, open_channel: OpenChannel) -> None:
        self.open_channel = open_channel

    def get_json(self, path: str) -> Any:
        code, body = engine.get(self.open_channel(), path)
        if code != 200:
            raise ForwardError(f"engine answered {code} to GET {path}")
        return json.loads(body)

    def running(self) -> list[str]:
        return [str(c["Id"]) for c in self.get_json("/containers/json") if c.get("Id")]

    def inspect(self, cid: str) -> dict[str, Any] | None:
        code, body = engine.get(self.open_channel(), f"/containers/{cid}/json")
        if code == 404:
            return None
        if code != 200:
            raise ForwardError(f"engine answered {code} to inspect {cid[:12]}")
        return json.loads(body)

    def events(self, holder: list[Any]) -> Iterator[dict[str, Any]]:
        """The event stream; the channel is put in `holder` so another thread can close it."""
        chan = self.open_channel()
        holder.append(chan)
        try:
            chan.sendall(engine.request_bytes("GET", events_path()))
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                chunk = chan.recv(65536)
                if not chunk:
                    raise ForwardError("the engine closed the event stream")
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            code, _ = engine.parse_response(head + b"\r\n\r\n")
            if code != 200:
                raise ForwardError(f"engine answered {code} to GET /events")
            yield {"Type": "pinnace", "Action": "subscribed"}
            while True:
                events, buffer = split_events(buffer)
                yield from events
                chunk = chan.recv(65536)
                if not chunk:
                    return
                buffer += chunk
        finally:
            with contextlib.suppress(Exception):
                chan.close()


class PortPublisher:
    """Keeps QEMU's host forwards equal to the running containers' published ports."""

    def __init__(self, hmp: Hmp, open_channel: OpenChannel, expose_all: bool,
                 reserved: Iterable[Key] = (),
                 on_change: Callable[[list[dict[str, Any]]], None] | None = None,
                 on_new_container: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.hmp = hmp
        self.engine = EngineClient(open_channel)
        self.expose_all = expose_all
        self.reserved = set(reserved)
        self.on_change = on_change
        self.on_new_container = on_new_container
        self.inspected: dict[str, list[PortRule]] = {}
        self.errors: dict[Key, str] = {}
        self.entries: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._channels: list[Any] = []
        self._seen: set[str] = set()  # containers already shown to on_new_container
        self._stopping = threading.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="port-publisher")

    async def stop(self) -> None:
        self._stopping.set()
        for chan in list(self._channels):
            with contextlib.suppress(Exception):
                chan.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    # -- the loop --

    async def _run(self) -> None:
        reader = asyncio.create_task(self._follow_events())
        try:
            while True:
                try:
                    timeout = RETRY_FAILED_S if self.errors else None
                    await asyncio.wait_for(self._wake.wait(), timeout)
                    await asyncio.sleep(DEBOUNCE_S)  # a burst of events -> one sync
                except TimeoutError:
                    pass
                self._wake.clear()
                try:
                    await self.sync()
                except (PinnaceError, OSError, ValueError, KeyError) as exc:
                    log.warning("port sync failed: %s", exc)
                    await asyncio.sleep(1.0)
                    self._wake.set()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _follow_events(self) -> None:
        """Read the event stream in a thread; every relevant event wakes the sync loop."""
        loop = asyncio.get_running_loop()
        attempt = 0

        def pump() -> None:
            self._channels.clear()
            for event in self.engine.events(self._channels):
                if self._stopping.is_set():
                    return
                if event.get("Type") == "container" and event.get("Action") == "create":
                    # At once: a short-lived `--rm` container may be gone before the next sync.
                    cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
                    with contextlib.suppress(PinnaceError, OSError, EOFError, ValueError):
                        self._show_new(cid, self.engine.inspect(cid) if cid else None)
                if event.get("Type") == "pinnace" or relevant(event):
                    loop.call_soon_threadsafe(self._wake.set)

        while not self._stopping.is_set():
            try:
                await loop.run_in_executor(None, pump)
                attempt = 0
            except (PinnaceError, OSError, EOFError, ValueError) as exc:
                log.info("engine event stream: %s", exc)
            except Exception as exc:  # noqa: BLE001 - a paramiko error: retry, never die
                log.info("engine event stream: %r", exc)
            if self._stopping.is_set():
                return
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1
            self._wake.set()  # events may have been missed: resync

    # -- one reconciliation --

    def _desired(self) -> list[PortRule]:
        """Blocking: running containers' rules (inspect once per container id)."""
        running = self.engine.running()
        for cid in list(self.inspected):
            if cid not in running:
                del self.inspected[cid]
        for cid in running:
            if cid in self.inspected:
                continue
            inspect = self.engine.inspect(cid)
            if inspect is None or not (inspect.get("State") or {}).get("Running", True):
                continue
            self.inspected[cid] = rules_from_inspect(inspect, self.expose_all)
            self._show_new(cid, inspect)
        return [rule for cid in running for rule in self.inspected.get(cid, [])]

    def _show_new(self, cid: str, inspect: dict[str, Any] | None) -> None:
        if inspect is None or cid in self._seen or self.on_new_container is None:
            return
        self._seen.add(cid)
        if len(self._seen) > 10000:
            self._seen.clear()
        with contextlib.suppress(Exception):
            self.on_new_container(inspect)

    async def active(self) -> dict[Key, PortRule]:
        return parse_usernet(await self.hmp("info usernet"), self.reserved)

    async def sync(self) -> None:
        desired = await asyncio.get_running_loop().run_in_executor(None, self._desired)
        plan = diff(desired, await self.active())
        errors: dict[Key, str] = {k: v for k, v in self.errors.items() if any(r.key == k for r in desired)}
        for rule in plan.remove:
            out = await self.hmp(rule.remove_command())
            if remove_failed(out):
                log.warning("cannot remove the forward %s:%d/%s: %s", rule.host_ip, rule.host_port,
                            rule.proto, out.strip())
            else:
                log.info("port forward removed: %s:%d/%s", rule.host_ip, rule.host_port, rule.proto)
        for rule in plan.add:
            message = ""
            if rule.proto == "udp" and host_port_busy(rule.proto, rule.host_ip, rule.host_port):
                message = conflict_message(rule)
            else:
                out = await self.hmp(rule.add_command())
                if add_failed(out):
                    message = conflict_message(rule, out.strip().splitlines()[-1])
            if message:
                if errors.get(rule.key) != message:
                    log.error("%s", message)
                errors[rule.key] = message
            else:
                errors.pop(rule.key, None)
                log.info("port forward added: %s", rule.describe())
        for loser, winner in plan.clashes:
            log.error("%s", conflict_message(loser, f"also published by {winner.container_name}"))
        self.errors = errors
        clash_errors = {id(loser): conflict_message(loser, f"also published by {winner.container_name}")
                        for loser, winner in plan.clashes}
        seen: set[Key] = set()
        entries = []
        for rule in desired:
            if rule.key in seen:
                entries.append(status_entry(rule, clash_errors.get(id(rule), "")))
                continue
            seen.add(rule.key)
            entries.append(status_entry(rule, errors.get(rule.key, "")))
        if entries != self.entries:
            self.entries = entries
            if self.on_change is not None:
                self.on_change(entries)
