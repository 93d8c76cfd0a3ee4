"""The host IPv6 relays against real local sockets, and the guest relay's start-up against a fake channel."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from hypervisor import ipv6_relay
from hypervisor.errors import ForwardError
from hypervisor.ipv6_relay import GuestRelays, HostRelays, RelaySpec, open_relay
from tests.netcheck import needs_ipv6

pytestmark = pytest.mark.timeout(30)


def free_port(family: int = socket.AF_INET6, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(family, kind) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- TCP -------------------------------------------------------------------------------------


async def _tcp_upstream() -> tuple[asyncio.AbstractServer, int]:
    """Reads everything up to the client's half-close, then answers with it reversed and closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # to EOF: the relay must pass the client's half-close on
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _tcp_exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("::1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()  # half-close: the answer must still come back
    answer = await reader.read()
    writer.close()
    return answer


@needs_ipv6
def test_tcp_relay_copies_both_ways_with_half_close() -> None:
    async def main() -> None:
        server, upstream = await _tcp_upstream()
        port = free_port()
        relay = await open_relay(RelaySpec("tcp", "::1", port, ("127.0.0.1", upstream)))
        try:
            payload = bytes(range(256)) * 8192  # 2 MiB: more than any buffer on the way
            answers = await asyncio.gather(*(_tcp_exchange(port, payload + bytes([i])) for i in range(3)))
            assert answers == [(payload + bytes([i]))[::-1] for i in range(3)]
        finally:
            await relay.close()
            server.close()
        with pytest.raises(OSError):  # closed: refused, as a removed container's port should be
            await _tcp_exchange(port, b"x")

    asyncio.run(main())


@needs_ipv6
def test_tcp_relay_without_upstream_closes_the_client() -> None:
    async def main() -> None:
        dead = free_port(socket.AF_INET)
        port = free_port()
        relay = await open_relay(RelaySpec("tcp", "::1", port, ("127.0.0.1", dead)))
        try:
            reader, writer = await asyncio.open_connection("::1", port)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        finally:
            await relay.close()

    asyncio.run(main())


@needs_ipv6
def test_closing_a_relay_ends_its_open_connections() -> None:
    async def main() -> None:
        held: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            await reader.read()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = free_port()
        relay = await open_relay(RelaySpec("tcp", "::1", port, ("127.0.0.1", server.sockets[0].getsockname()[1])))
        reader, writer = await asyncio.open_connection("::1", port)
        writer.write(b"hello")
        await writer.drain()
        while not held:
            await asyncio.sleep(0.01)
        await relay.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        for upstream_side in held:
            upstream_side.close()
        server.close()

    asyncio.run(main())


@needs_ipv6
def test_bind_conflicts_raise_and_are_reported_by_key() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
            holder.bind(("::1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            with pytest.raises(OSError) as info:
                await open_relay(RelaySpec("tcp", "::1", port, ("127.0.0.1", 1)))
            assert info.value.errno == errno.EADDRINUSE
            relays = HostRelays()
            free = free_port()
            errors = await relays.apply({"busy": RelaySpec("tcp", "::1", port, ("127.0.0.1", 1)),
                                         "free": RelaySpec("tcp", "::1", free, ("127.0.0.1", 1))})
            assert list(errors) == ["busy"] and errors["busy"].errno == errno.EADDRINUSE
            assert list(relays.running) == ["free"]
            # Another upstream for the same key: the relay is replaced, not kept.
            moved = RelaySpec("tcp", "::1", free, ("127.0.0.1", 2))
            assert await relays.apply({"free": moved}) == {}
            assert relays.running["free"][0] == moved
            await relays.close()
            assert relays.running == {}

    asyncio.run(main())


@needs_ipv6
def test_ipv6_any_is_v6only_beside_an_ipv4_listener() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ipv4:
            ipv4.bind(("0.0.0.0", 0))  # what QEMU holds for an exposed port
            ipv4.listen()
            port = ipv4.getsockname()[1]
            relay = await open_relay(RelaySpec("tcp", "::", port, ("127.0.0.1", port)))
            await relay.close()

    asyncio.run(main())


# --- UDP -------------------------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    """Answers each datagram with the sender's port, so every client can check it got its own."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.transport.sendto(data + b"@" + str(addr[1]).encode(), addr)  # type: ignore[attr-defined]


@needs_ipv6
def test_udp_relay_keeps_two_clients_apart_and_forgets_idle_ones() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        upstream = echo.get_extra_info("sockname")[1]
        port = free_port(kind=socket.SOCK_DGRAM)
        relay = ipv6_relay.UdpRelay(RelaySpec("udp", "::1", port, ("127.0.0.1", upstream)), idle_s=0.4)
        await relay.start()
        clients = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for client in clients:
                client.settimeout(5)

            def ask(client: socket.socket, payload: bytes) -> bytes:
                client.sendto(payload, ("::1", port))
                return client.recvfrom(65536)[0]

            first = await loop.run_in_executor(None, ask, clients[0], b"one")
            second = await loop.run_in_executor(None, ask, clients[1], b"two")
            assert first.startswith(b"one@") and second.startswith(b"two@")
            assert first.split(b"@")[1] != second.split(b"@")[1]  # one upstream socket per client
            assert len(relay.peers) == 2
            again = await loop.run_in_executor(None, ask, clients[0], b"one more")
            assert again.split(b"@")[1] == first.split(b"@")[1]
            for _ in range(50):
                if not relay.peers:
                    break
                await asyncio.sleep(0.1)
            assert relay.peers == {}  # idle: closed
            assert (await loop.run_in_executor(None, ask, clients[1], b"back")).startswith(b"back@")
        finally:
            for client in clients:
                client.close()
            await relay.close()
            echo.close()
        assert relay.peers == {}

    asyncio.run(main())


@needs_ipv6
def test_udp_bind_conflict_is_reported() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as holder:
            holder.bind(("::1", 0))
            with pytest.raises(OSError) as info:
                await open_relay(RelaySpec("udp", "::1", holder.getsockname()[1], ("127.0.0.1", 1)))
            assert info.value.errno == errno.EADDRINUSE

    asyncio.run(main())


# --- the guest relay's start-up ----------------------------------------------------------------


class FakeChannel:
    """What paramiko's Channel offers the guest relay: output in pieces, then (maybe) its end."""

    def __init__(self, pieces: list[bytes], ends: bool = False) -> None:
        self.pieces, self.ends = list(pieces), ends
        self.closed = False
        self.command = ""

    def settimeout(self, _timeout: float) -> None:
        pass

    def recv(self, _size: int) -> bytes:
        if self.pieces:
            return self.pieces.pop(0)
        if self.ends:
            return b""
        raise TimeoutError

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return self.ends and not self.pieces

    def close(self) -> None:
        self.closed = True


def guest_relays(answers: dict[str, FakeChannel]) -> tuple[GuestRelays, list[str]]:
    commands: list[str] = []

    def open_command(command: str) -> FakeChannel:
        commands.append(command)
        port = next(p for p in answers if f"-host-port {p} -container" in command)
        return answers[port]

    return GuestRelays(open_command, start_timeout=2.0), commands


def test_guest_relay_starts_reports_failure_and_ends_with_its_channel() -> None:
    ok = FakeChannel([b"pid 41\n", b"0\n"])
    busy = FakeChannel([b"pid 42\n1\n", b"listen tcp4 10.0.2.17:22: bind: address already in use"])
    relays, commands = guest_relays({"18081": ok, "22": busy})
    errors = relays.apply({("tcp", 18081): "::1", ("tcp", 22): "::1"})
    assert list(errors) == [("tcp", 22)] and "address already in use" in errors[("tcp", 22)]
    assert busy.closed and not ok.closed
    assert relays.running[("tcp", 18081)].pid == 41
    assert all("docker-proxy" in c for c in commands)

    assert relays.apply({}) == {} and ok.closed and relays.running == {}


def test_a_guest_relay_that_ends_at_once_or_stays_silent_is_an_error() -> None:
    relays, _ = guest_relays({"1": FakeChannel([b"1\nno docker-proxy in the guest\n"], ends=True),
                              "2": FakeChannel([b"pid 7\n"])})
    errors = relays.apply({("udp", 1): "::1", ("udp", 2): "::1"})
    assert "no docker-proxy in the guest" in errors[("udp", 1)]
    assert "did not answer within 2 s" in errors[("udp", 2)]


def test_a_dead_guest_relay_is_started_again() -> None:
    first, second = FakeChannel([b"pid 1\n0\n"]), FakeChannel([b"pid 2\n0\n"])
    channels = [first, second]
    relays = GuestRelays(lambda _command: channels.pop(0))
    assert relays.apply({("tcp", 80): "::1"}) == {}
    first.ends = True  # its session ended (an sshd restart)
    assert relays.apply({("tcp", 80): "::1"}) == {}
    assert relays.running[("tcp", 80)].pid == 2 and first.closed
    relays.close()
    assert second.closed


def test_a_guest_link_that_cannot_open_a_session_is_an_error() -> None:
    def refuse(_command: str) -> FakeChannel:
        raise ForwardError("the VM is not running")

    relays = GuestRelays(refuse)
    assert "the VM is not running" in relays.apply({("tcp", 80): "::1"})[("tcp", 80)]
    relays.sweep()  # logged, not raised
