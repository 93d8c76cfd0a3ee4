"""Published ports on the host's IPv6 addresses: the agent's own relays.

QEMU 7.2's user networking forwards only from host IPv4 addresses, so for a container's IPv6
binding the agent listens on the host's [::1]:P ([::]:P with IPV6_V6ONLY when exposing to all
interfaces) and relays every TCP connection and UDP datagram to an IPv4 forward on 127.0.0.1
(hypervisor/ports.py decides which). Runs on the agent's event loop; the data path is a plain
copy with bounded buffers. For an IPv6-only binding the guest side is a docker-proxy the agent
runs over its SSH link (GuestRelays): it lives exactly as long as that SSH session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypervisor.errors import ForwardError
from hypervisor.ports import RelayStart, guest_relay_command, guest_relay_sweep_command, parse_relay_start

log = logging.getLogger("pinnace.ports")

CHUNK = 64 * 1024  # one read; with the streams' 64 KiB high-water marks: ~128 KiB per direction
CONNECT_TIMEOUT_S = 10.0
UDP_IDLE_S = 60.0  # a client's upstream socket is closed after this long without a datagram
UDP_MAX_PEERS = 1024  # clients with an upstream socket at once; datagrams of more are dropped
UDP_MAX_PENDING = 64  # datagrams held per client while its upstream socket opens
UDP_MAX_BUFFER = 256 * 1024  # an upstream socket's unsent bytes past which datagrams are dropped
GUEST_START_TIMEOUT_S = 20.0  # a guest relay must say it listens within this (TCG is slow)


@dataclass(frozen=True)
class RelaySpec:
    """Listen on [listen_ip]:port (an IPv6 address) and relay to the IPv4 `upstream`."""

    proto: str
    listen_ip: str
    port: int
    upstream: tuple[str, int]


def listening_socket(spec: RelaySpec) -> socket.socket:
    """The bound (and, for TCP, listening) IPv6 socket; IPV6_V6ONLY so [::] never takes IPv4's port."""
    kind = socket.SOCK_DGRAM if spec.proto == "udp" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET6, kind)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM and not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            # POSIX: reuse past TIME_WAIT only (on Windows the option would let a port be stolen).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.listen_ip, spec.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# --- TCP ---------------------------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (the peer may still answer)."""
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()  # waits while the far side is slower: the buffer stays bounded
    if writer.can_write_eof():
        writer.write_eof()


class TcpRelay:
    """Accepts on the IPv6 address; each client gets its own connection to the upstream."""

    def __init__(self, spec: RelaySpec) -> None:
        self.spec = spec
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = listening_socket(self.spec)
        try:
            self._server = await asyncio.start_server(self._accepted, sock=sock, limit=CHUNK)
        except BaseException:
            sock.close()
            raise

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, upstream = await asyncio.wait_for(
                    asyncio.open_connection(*self.spec.upstream, limit=CHUNK), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                log.debug("relay %d: upstream %s:%d: %s", self.spec.port, *self.spec.upstream, exc)
                return
            copies = [asyncio.ensure_future(_pipe(reader, upstream)), asyncio.ensure_future(_pipe(up_reader, writer))]
            try:
                # Both directions to their EOF (half-close carried); a reset on either side ends both.
                await asyncio.wait(copies, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for copy in copies:
                    copy.cancel()
                await asyncio.gather(*copies, return_exceptions=True)
        finally:
            for side in (writer, upstream):
                if side is not None:
                    side.close()
            if task is not None:
                self._clients.discard(task)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)


# --- UDP ---------------------------------------------------------------------------------------


class _Front(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("relay %d/udp: %s", self.relay.spec.port, exc)


class _Peer(asyncio.DatagramProtocol):
    """One client's own upstream socket, so the answers find their way back to that client."""

    def __init__(self, relay: UdpRelay, client: Any) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.last = time.monotonic()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:
            transport.close()
            return
        pending, self.pending = self.pending, []
        for data in pending:
            self.send(data)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = time.monotonic()
        front = self.relay.front
        if front is not None and not front.is_closing():
            front.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        log.debug("relay %d/udp upstream: %s", self.relay.spec.port, exc)  # e.g. nothing listens yet

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.forget(self)

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.transport is None:
            if len(self.pending) < UDP_MAX_PENDING:
                self.pending.append(data)
        elif not self.transport.is_closing() and self.transport.get_write_buffer_size() < UDP_MAX_BUFFER:
            self.transport.sendto(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UdpRelay:
    """Datagrams both ways; one upstream socket per client address, closed after idle_s of silence."""

    def __init__(self, spec: RelaySpec, idle_s: float = UDP_IDLE_S) -> None:
        self.spec, self.idle_s = spec, idle_s
        self.front: asyncio.DatagramTransport | None = None
        self.peers: dict[Any, _Peer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = listening_socket(self.spec)
        try:
            self.front, _ = await loop.create_datagram_endpoint(lambda: _Front(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._sweeper = loop.create_task(self._expire(), name=f"udp-relay-{self.spec.port}")

    def from_client(self, data: bytes, client: Any) -> None:
        peer = self.peers.get(client)
        if peer is None:
            if len(self.peers) >= UDP_MAX_PEERS:
                return
            peer = self.peers[client] = _Peer(self, client)
            task = asyncio.get_running_loop().create_task(self._connect(peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer.send(data)

    async def _connect(self, peer: _Peer) -> None:
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: peer, remote_addr=self.spec.upstream)
        except OSError as exc:
            log.debug("relay %d/udp: upstream %s:%d: %s", self.spec.port, *self.spec.upstream, exc)
            self.forget(peer)

    def forget(self, peer: _Peer) -> None:
        if self.peers.get(peer.client) is peer:
            del self.peers[peer.client]
        peer.close()

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(min(self.idle_s / 4, 5.0))
            cutoff = time.monotonic() - self.idle_s
            for peer in [p for p in self.peers.values() if p.last < cutoff]:
                self.forget(peer)

    async def close(self) -> None:
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for peer in list(self.peers.values()):
            self.forget(peer)
        if self.front is not None:
            self.front.close()
            self.front = None


Relay = TcpRelay | UdpRelay


async def open_relay(spec: RelaySpec) -> Relay:
    """A running relay for `spec`; OSError when its address cannot be bound (in use, privileged)."""
    relay: Relay = UdpRelay(spec) if spec.proto == "udp" else TcpRelay(spec)
    await relay.start()
    return relay


class HostRelays:
    """The running host IPv6 relays, kept equal to what the publisher wants (event loop only)."""

    def __init__(self, opener: Callable[[RelaySpec], Any] = open_relay) -> None:
        self.opener = opener
        self.running: dict[Any, tuple[RelaySpec, Relay]] = {}

    async def apply(self, wanted: Mapping[Any, RelaySpec]) -> dict[Any, OSError]:
        """Close what is not wanted (or wanted elsewhere), open what is missing; bind errors by key."""
        for key, (spec, relay) in list(self.running.items()):
            if wanted.get(key) != spec:
                del self.running[key]
                await relay.close()
                log.info("IPv6 relay closed: [%s]:%d/%s", spec.listen_ip, spec.port, spec.proto)
        errors: dict[Any, OSError] = {}
        for key, spec in wanted.items():
            if key in self.running:
                continue
            try:
                self.running[key] = (spec, await self.opener(spec))
            except OSError as exc:
                errors[key] = exc
                continue
            log.info("IPv6 relay: [%s]:%d/%s -> %s:%d", spec.listen_ip, spec.port, spec.proto, *spec.upstream)
        return errors

    async def close(self) -> None:
        await self.apply({})


# --- the guest end of an IPv6-only binding -----------------------------------------------------

OpenCommand = Callable[[str], Any]  # a guest command -> its paramiko Channel (EngineLink.open_guest_command)


@dataclass
class GuestRelay:
    """A docker-proxy in the guest on 10.0.2.17:port -> [target]:port; ends with its channel."""

    proto: str
    port: int
    target: str
    channel: Any
    pid: int | None = None

    def alive(self) -> bool:
        return not (self.channel.closed or self.channel.exit_status_ready())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()  # the guest's cat sees EOF and kills the proxy


def _read_start(channel: Any, timeout: float) -> RelayStart:
    """The relay's `pid N` and readiness lines, within `timeout`; the error text in full."""
    deadline = time.monotonic() + timeout
    text, state = "", RelayStart()
    channel.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = channel.recv(4096)
        except TimeoutError:
            data = None
        while channel.recv_stderr_ready():
            text += "\n" + channel.recv_stderr(4096).decode(errors="replace")
        if data == b"":
            state = parse_relay_start(text + "\n")
            return state if state.ready is not None else RelayStart(state.pid, False, text.strip()
                                                                     or "the guest relay ended at once")
        if data:
            text += data.decode(errors="replace")
        state = parse_relay_start(text)
        if state.ready is True:
            return state
        if state.ready is False:
            deadline = min(deadline, time.monotonic() + 0.5)  # docker-proxy's reason follows its "1"
    return state if state.ready is not None else RelayStart(state.pid, False,
                                                            f"the guest relay did not answer within {timeout:g} s")


@dataclass
class GuestRelays:
    """The guest relays of IPv6-only bindings, by (proto, port). Blocking: run in an executor."""

    open_command: OpenCommand
    start_timeout: float = GUEST_START_TIMEOUT_S
    running: dict[tuple[str, int], GuestRelay] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sweep(self) -> None:
        """End the relays a previous agent left (its session may not have ended yet)."""
        try:
            channel = self.open_command(guest_relay_sweep_command())
            try:
                channel.settimeout(10.0)
                while channel.recv(4096):
                    pass
            finally:
                channel.close()
        except Exception as exc:  # noqa: BLE001 - paramiko's errors vary; the next start kills its own stale relay
            log.info("cannot sweep leftover guest relays: %s", exc)

    def any_dead(self) -> bool:
        """A relay whose session ended (local state only: cheap, and fine while the VM is paused)."""
        return any(not relay.alive() for relay in list(self.running.values()))

    def apply(self, wanted: Mapping[tuple[str, int], str]) -> dict[tuple[str, int], str]:
        """Stop relays not wanted (or dead, or aimed elsewhere), start the missing: errors by key."""
        errors: dict[tuple[str, int], str] = {}
        with self._lock:
            for key, relay in list(self.running.items()):
                if wanted.get(key) != relay.target or not relay.alive():
                    if relay.alive():
                        log.info("guest relay %d/%s ended", relay.port, relay.proto)
                    else:
                        log.warning("guest relay %d/%s had ended; starting it again", relay.port, relay.proto)
                    relay.close()
                    del self.running[key]
            for key, target in wanted.items():
                if key in self.running:
                    continue
                try:
                    self.running[key] = self._start(*key, target)
                except ForwardError as exc:
                    errors[key] = str(exc)
        return errors

    def _start(self, proto: str, port: int, target: str) -> GuestRelay:
        try:
            channel = self.open_command(guest_relay_command(proto, port, target))
        except Exception as exc:  # noqa: BLE001 - PinnaceError or a paramiko error
            raise ForwardError(f"cannot start the guest relay for {port}/{proto}", exc) from exc
        try:
            state = _read_start(channel, self.start_timeout)
        except Exception as exc:  # noqa: BLE001 - a transport that died meanwhile
            channel.close()
            raise ForwardError(f"the guest relay for {port}/{proto} failed", exc) from exc
        if not state.ready:
            channel.close()
            raise ForwardError(f"the guest relay for {port}/{proto} failed: {state.error}")
        log.info("guest relay %s:%d/%s -> [%s]:%d (pid %s)", "10.0.2.17", port, proto, target, port, state.pid)
        return GuestRelay(proto, port, target, channel, state.pid)

    def close(self) -> None:
        with self._lock:
            for relay in self.running.values():
                relay.close()
            self.running.clear()
