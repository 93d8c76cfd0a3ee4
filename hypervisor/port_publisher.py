"""The port publisher: keeps QEMU's host forwards equal to the running containers' published
ports (the rules are hypervisor/ports.py's), and the agent's IPv6 relays (hypervisor/ipv6_relay.py)
equal to their IPv6 bindings, following the engine's event stream through the engine link's
channels. It also tells who asks which host trees the running containers bind-mount (the
file-event relay follows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from hypervisor import engine
from hypervisor.errors import ForwardError, PinnaceError
from hypervisor.hostinfo import current_uid
from hypervisor.ipv6_relay import GuestRelays, HostRelays, OpenCommand, RelaySpec
from hypervisor.ports import (
    DEBOUNCE_S,
    HOP_HOST,
    RECONNECT_S,
    RETRY_FAILED_S,
    Ipv6Rule,
    Key,
    Plan,
    PortRule,
    add_failed,
    add_failure_message,
    adopted_hop_port,
    bind_sources,
    conflict_message,
    diff,
    events_path,
    first_unprivileged_port,
    free_loopback_port,
    hop_rule,
    host_port_busy,
    ipv6_rules_from_inspect,
    parse_usernet,
    relay_failure_message,
    relevant,
    remove_failed,
    rules_from_inspect,
    split_events,
    status_entry,
    twin_relay_error,
    unrelayable,
)

log = logging.getLogger("pinnace.ports")

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
            try:
                head, _, buffer = engine.read_head(chan).partition(b"\r\n\r\n")
            except ValueError as exc:
                raise ForwardError("the engine closed the event stream") from exc
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
                 on_new_container: Callable[[dict[str, Any]], None] | None = None,
                 on_binds: Callable[[set[str]], None] | None = None,
                 guest_command: OpenCommand | None = None) -> None:
        self.hmp = hmp
        self.engine = EngineClient(open_channel)
        self.expose_all = expose_all
        self.reserved = set(reserved)
        self.on_change = on_change
        self.on_new_container = on_new_container
        self.on_binds = on_binds  # the bind-mount sources of the running containers, when they change
        self.inspected: dict[str, list[PortRule]] = {}
        self.inspected6: dict[str, list[Ipv6Rule]] = {}
        self.relays = HostRelays()  # host [::1]:P listeners
        self.guest = GuestRelays(guest_command) if guest_command is not None else None  # IPv6-only bindings
        self._hop_ports: dict[tuple[str, int], int] = {}  # (proto, guest port) -> its hidden hop's host port
        self._no_ipv6: set[Key] = set()  # twins not relayed: the host has no IPv6 to listen on
        self.binds: dict[str, list[str]] = {}
        self._binds_told: set[str] | None = None
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
        await self.relays.close()
        if self.guest is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.guest.close)

    # -- the loop --

    async def _run(self) -> None:
        if self.guest is not None:  # a previous agent's guest relays, before any new one
            await asyncio.get_running_loop().run_in_executor(None, self.guest.sweep)
        reader = asyncio.create_task(self._follow_events())
        try:
            while True:
                try:
                    # Guest relays end with their SSH session (an sshd restart): look again now and then.
                    timeout = RETRY_FAILED_S if self.errors or (self.guest and self.guest.running) else None
                    await asyncio.wait_for(self._wake.wait(), timeout)
                    await asyncio.sleep(DEBOUNCE_S)  # a burst of events -> one sync
                except TimeoutError:
                    if not self.errors and not (self.guest and self.guest.any_dead()):
                        continue
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

    def _desired(self) -> tuple[list[PortRule], list[Ipv6Rule]]:
        """Blocking: running containers' IPv4 and IPv6 rules (inspect once per container id)."""
        running = self.engine.running()
        for cid in list(self.inspected):
            if cid not in running:
                del self.inspected[cid]
                self.inspected6.pop(cid, None)
                self.binds.pop(cid, None)
        for cid in running:
            if cid in self.inspected:
                continue
            inspect = self.engine.inspect(cid)
            if inspect is None or not (inspect.get("State") or {}).get("Running", True):
                continue
            self.inspected[cid] = rules_from_inspect(inspect, self.expose_all)
            self.inspected6[cid] = ipv6_rules_from_inspect(inspect, self.expose_all)
            self.binds[cid] = bind_sources(inspect)
            self._show_new(cid, inspect)
        self._tell_binds()
        return ([rule for cid in running for rule in self.inspected.get(cid, [])],
                [rule for cid in running for rule in self.inspected6.get(cid, [])])

    def _tell_binds(self) -> None:
        sources = {source for found in self.binds.values() for source in found}
        if self.on_binds is not None and sources != self._binds_told:
            self._binds_told = sources
            try:
                self.on_binds(sources)
            except Exception:  # noqa: BLE001 - a listener's failure must not stop port publishing
                log.exception("bind listener failed")

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
        desired, wanted6 = await asyncio.get_running_loop().run_in_executor(None, self._desired)
        active = await self.active()
        hops = self._hops(wanted6, desired, active)
        plan = diff([*desired, *hops.values()], active)
        keep = {r.key for r in desired} | {h.key for h in hops.values()}
        errors: dict[Key, str] = {k: v for k, v in self.errors.items() if k in keep}
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
                    message = add_failure_message(rule, out.strip().splitlines()[-1], current_uid(),
                                                  first_unprivileged_port())
            if message:
                if errors.get(rule.key) != message:
                    log.error("%s", message)
                errors[rule.key] = message
            else:
                errors.pop(rule.key, None)
                log.info("port forward added: %s", rule.describe())
        for loser, winner in plan.clashes:
            log.error("%s", conflict_message(loser, f"also published by {winner.container_name}"))
        for key, hop in hops.items():
            if hop.key in errors:
                self._hop_ports.pop(key, None)  # taken meanwhile: another port on the next try
        errors6, clashes6 = await self._sync_ipv6(wanted6, desired, hops, errors)
        self.errors = {**errors, **errors6}
        entries = self._entries(desired, wanted6, hops, plan, errors, errors6, clashes6)
        if entries != self.entries:
            self.entries = entries
            if self.on_change is not None:
                self.on_change(entries)

    # -- IPv6 --

    def _hops(self, wanted6: list[Ipv6Rule], desired: list[PortRule],
              active: dict[Key, PortRule]) -> dict[tuple[str, int], PortRule]:
        """The hidden IPv4 forwards of IPv6-only bindings: kept, adopted from QEMU, or on a new free port."""
        used = {r.key for r in desired} | self.reserved
        hops: dict[tuple[str, int], PortRule] = {}
        for rule in wanted6:
            if rule.twin_key is not None or rule.guest_key in hops:
                continue
            port = self._hop_ports.get(rule.guest_key) or adopted_hop_port(rule, active)
            while port is None or (rule.proto, HOP_HOST, port) in used:
                port = free_loopback_port(rule.proto)
            used.add((rule.proto, HOP_HOST, port))
            hops[rule.guest_key] = hop_rule(rule, port)
        self._hop_ports = {key: hop.host_port for key, hop in hops.items()}
        return hops

    async def _sync_ipv6(self, wanted6: list[Ipv6Rule], desired: list[PortRule],
                         hops: dict[tuple[str, int], PortRule],
                         errors4: dict[Key, str]) -> tuple[dict[Key, str], dict[int, str]]:
        """Guest relays, then host relays, for the IPv6 bindings: (errors by key, clash errors by id)."""
        owners: dict[Key, PortRule] = {}
        for rule in desired:
            owners.setdefault(rule.key, rule)
        chosen: dict[Key, Ipv6Rule] = {}
        errors: dict[Key, str] = {}
        clashes: dict[int, str] = {}
        specs: dict[Key, RelaySpec] = {}
        guest_wanted: dict[tuple[str, int], str] = {}
        for rule in wanted6:
            if rule.key in chosen:
                clashes[id(rule)] = conflict_message(rule, f"also published by {chosen[rule.key].container_name}")
                continue
            chosen[rule.key] = rule
            if rule.twin_key is not None:
                why = twin_relay_error(rule, owners, errors4)
                if why:
                    errors[rule.key] = why
                else:
                    specs[rule.key] = RelaySpec(rule.proto, rule.host_ip, rule.host_port, (HOP_HOST, rule.host_port))
                continue
            hop = hops[rule.guest_key]
            if hop.key in errors4:
                errors[rule.key] = (f"host port {rule.address} for container {rule.container_name}: its hidden "
                                    f"forward {hop.address} failed: {errors4[hop.key]}")
            elif self.guest is None:
                errors[rule.key] = f"host port {rule.address}: no guest link to relay it through"
            elif guest_wanted.setdefault(rule.guest_key, rule.guest_ip) != rule.guest_ip:
                errors[rule.key] = conflict_message(rule, "another IPv6 address has that port in the guest")
            else:
                specs[rule.key] = RelaySpec(rule.proto, rule.host_ip, rule.host_port, (HOP_HOST, hop.host_port))
        if self.guest is not None:
            failed = await asyncio.get_running_loop().run_in_executor(None, self.guest.apply, guest_wanted)
            for key, rule in chosen.items():
                why = failed.get(rule.guest_key) if rule.twin_key is None else None
                if why and key in specs:
                    del specs[key]
                    errors[key] = f"host port {rule.address} for container {rule.container_name}: {why}"
        for key, exc in (await self.relays.apply(specs)).items():
            rule = chosen[key]
            if rule.twin_key is not None and unrelayable(exc):
                if key not in self._no_ipv6:
                    log.info("no IPv6 relay for %s: %s", rule.address, exc.strerror or exc)
                    self._no_ipv6.add(key)
                continue
            errors[key] = relay_failure_message(rule, exc, current_uid(), first_unprivileged_port())
        self._no_ipv6 &= set(chosen)
        for key, message in errors.items():
            if self.errors.get(key) != message and message not in errors4.values():
                log.error("%s", message)
        return errors, clashes

    def _entries(self, desired: list[PortRule], wanted6: list[Ipv6Rule], hops: dict[tuple[str, int], PortRule],
                 plan: Plan, errors: dict[Key, str], errors6: dict[Key, str],
                 clashes6: dict[int, str]) -> list[dict[str, Any]]:
        """The status: one entry per IPv4 binding (its IPv6 twin's address and error folded in), then
        one per IPv6-only binding."""
        clash_errors = {id(loser): conflict_message(loser, f"also published by {winner.container_name}")
                        for loser, winner in plan.clashes}
        twins: dict[tuple[str, Key], list[Ipv6Rule]] = {}
        for rule6 in wanted6:
            if rule6.twin_key is not None and rule6.key not in self._no_ipv6:
                twins.setdefault((rule6.container_id, rule6.twin_key), []).append(rule6)

        def error6(rule6: Ipv6Rule) -> str:
            return clashes6.get(id(rule6)) or errors6.get(rule6.key, "")

        seen: set[Key] = set()
        entries = []
        for rule in desired:
            error = clash_errors.get(id(rule), "") if rule.key in seen else errors.get(rule.key, "")
            seen.add(rule.key)
            mine = twins.pop((rule.container_id, rule.key), [])
            error = error or next((e for e in map(error6, mine) if e), "")
            entries.append(status_entry(rule, error, [r.address for r in mine]))
        for rule6 in wanted6:
            if rule6.twin_key is None:
                entries.append(status_entry(rule6, error6(rule6), via=hops[rule6.guest_key].address))
        for rules6 in twins.values():  # a twin whose IPv4 binding made no rule (not expected)
            entries.extend(status_entry(r, error6(r)) for r in rules6)
        return entries
