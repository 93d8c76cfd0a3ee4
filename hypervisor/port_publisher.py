"""The port publisher: keeps QEMU's host forwards equal to the running containers' published
ports (the rules are hypervisor/ports.py's), following the engine's event stream through the
engine link's channels. It also tells who asks which host trees the running containers bind-mount
(the file-event relay follows them).
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
from hypervisor.ports import (
    DEBOUNCE_S,
    RECONNECT_S,
    RETRY_FAILED_S,
    Key,
    PortRule,
    add_failed,
    add_failure_message,
    bind_sources,
    conflict_message,
    diff,
    events_path,
    first_unprivileged_port,
    host_port_busy,
    parse_usernet,
    relevant,
    remove_failed,
    rules_from_inspect,
    split_events,
    status_entry,
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
                 on_binds: Callable[[set[str]], None] | None = None) -> None:
        self.hmp = hmp
        self.engine = EngineClient(open_channel)
        self.expose_all = expose_all
        self.reserved = set(reserved)
        self.on_change = on_change
        self.on_new_container = on_new_container
        self.on_binds = on_binds  # the bind-mount sources of the running containers, when they change
        self.inspected: dict[str, list[PortRule]] = {}
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
                self.binds.pop(cid, None)
        for cid in running:
            if cid in self.inspected:
                continue
            inspect = self.engine.inspect(cid)
            if inspect is None or not (inspect.get("State") or {}).get("Running", True):
                continue
            self.inspected[cid] = rules_from_inspect(inspect, self.expose_all)
            self.binds[cid] = bind_sources(inspect)
            self._show_new(cid, inspect)
        self._tell_binds()
        return [rule for cid in running for rule in self.inspected.get(cid, [])]

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
