r"""QMP on Windows is a named pipe QEMU creates, never a TCP port (issue #13): the argv, the address
the agent picks per platform, and the monitor's pipe path, all checked on any host. No real pipe
exists off Windows, so the pipe's client end is faked by a socketpair carrying a fake QEMU."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from hypervisor import monitor as monitor_mod
from hypervisor import platform as hplatform
from hypervisor.errors import MonitorError
from hypervisor.monitor import Monitor, NamedPipeAddress, check_pipe_server, open_named_pipe
from hypervisor.paths import pipe_name
from hypervisor.platform import WindowsPlatform
from hypervisor.spec import MachineSpec, build_argv

QEMU = Path("C:/qemu/qemu-system-x86_64.exe")
PIPE = r"\\.\pipe\pinnace-dev-qmp"


def make_spec(qmp: Path | NamedPipeAddress) -> MachineSpec:
    return MachineSpec(
        name="dev",
        arch="x86_64",
        cpus=2,
        memory_mib=2048,
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd"),
        rootfs=Path("/img/root.img"),
        cmdline="rootwait ro",
        data_disk=Path("/data/data.qcow2"),
        ssh_host_port=42022,
        fw_cfg=(),
        serial_log=Path("/logs/serial.log"),
        qmp_socket=qmp,
        pidfile=Path("/run/qemu.pid"),
    )


# --- the argv ------------------------------------------------------------------------------------


@pytest.mark.parametrize("accel", ["whpx", "tcg"])
def test_windows_argv_serves_qmp_on_a_pipe_and_listens_on_no_tcp_port(accel: str) -> None:
    argv = build_argv(QEMU, make_spec(NamedPipeAddress(pipe_name("dev", "qmp"))), accel, "windows")
    i = argv.index("pipe,id=qmp,path=pinnace-dev-qmp") - 1
    assert argv[i : i + 4] == ["-chardev", "pipe,id=qmp,path=pinnace-dev-qmp", "-mon", "chardev=qmp,mode=control"]
    assert "-qmp" not in argv
    assert not [a for a in argv if a.startswith("tcp:") or ",server=on" in a]  # no listener of any kind
    assert [a for a in argv if "tcp:" in a] == [a for a in argv if a.startswith("user,id=net0")]  # hostfwd only


def test_unix_argv_keeps_qmp_on_its_socket() -> None:
    argv = build_argv(QEMU, make_spec(Path("/run/qmp.sock")), "kvm", "linux")
    assert argv[argv.index("-qmp") + 1] == "unix:/run/qmp.sock,server=on,wait=off"
    assert "-mon" not in argv and not [a for a in argv if a.startswith("pipe,")]


def test_pipe_addresses_are_local_pipes_only() -> None:
    assert NamedPipeAddress(PIPE).short_name == "pinnace-dev-qmp"
    assert str(NamedPipeAddress(PIPE, server_pid=7)) == PIPE
    for bad in (r"\\server\pipe\pinnace-dev-qmp", "pinnace-dev-qmp", "\\\\.\\pipe\\", r"\\.\pipe\a\b"):
        with pytest.raises(ValueError):
            NamedPipeAddress(bad)


def test_the_qmp_pipe_name_comes_from_the_one_helper() -> None:
    assert pipe_name("dev", "qmp") == PIPE
    assert len({pipe_name("dev", kind) for kind in ("docker", "control", "qmp")}) == 3


# --- a fake QEMU on the far end --------------------------------------------------------------------


async def fake_qemu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[str]) -> None:
    """Greets, then answers every command as QEMU would (query-status: running)."""
    greeting = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8}, "package": ""}, "capabilities": []}}
    writer.write(json.dumps(greeting).encode() + b"\n")
    await writer.drain()
    decoder, pending = json.JSONDecoder(), ""
    while chunk := await reader.read(4096):
        pending += chunk.decode()
        while pending.strip():  # QMP clients need not end a command with a newline (qemu.qmp does not)
            try:
                msg, end = decoder.raw_decode(pending.lstrip())
            except json.JSONDecodeError:
                break  # the rest of it is still on the way
            pending = pending.lstrip()[end:]
            seen.append(msg["execute"])
            ret: Any = {"status": "running", "running": True} if msg["execute"] == "query-status" else {}
            reply = {"return": ret, **({"id": msg["id"]} if "id" in msg else {})}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    writer.close()


class PipeFake:
    """A PipeConnector over a socketpair whose other end is a fake QEMU; records its calls."""

    def __init__(self, fail_first: list[BaseException] | None = None) -> None:
        self.calls: list[tuple[NamedPipeAddress, int]] = []
        self.fail_first = list(fail_first or [])
        self.seen: list[str] = []
        self.server: asyncio.Task[None] | None = None

    async def __call__(self, address: NamedPipeAddress, limit: int) -> tuple[Any, Any]:
        self.calls.append((address, limit))
        if self.fail_first:
            raise self.fail_first.pop(0)
        ours, theirs = socket.socketpair()
        server_streams = await asyncio.open_connection(sock=theirs)
        self.server = asyncio.create_task(fake_qemu(*server_streams, self.seen))
        return await asyncio.open_connection(sock=ours, limit=limit)


def test_monitor_talks_qmp_over_the_pipe_connector() -> None:
    fake = PipeFake()

    async def scenario() -> str:
        mon = Monitor(NamedPipeAddress(PIPE, server_pid=4242), "pinnace-dev", pipe_connector=fake)
        await mon.connect(timeout=5)
        out = await mon.execute("query-status")
        await mon.close()
        return str(out["status"])

    assert asyncio.run(scenario()) == "running"
    assert [(a.name, a.server_pid) for a, _ in fake.calls] == [(PIPE, 4242)]
    assert fake.calls[0][1] >= 1024 * 1024  # qemu.qmp's read limit is passed on
    assert fake.seen == ["qmp_capabilities", "query-status"]


def test_monitor_retries_until_qemu_has_created_the_pipe() -> None:
    fake = PipeFake(
        fail_first=[
            FileNotFoundError(2, "The system cannot find the file specified"),
            FileNotFoundError(2, "The system cannot find the file specified"),
        ]
    )

    async def scenario() -> None:
        mon = Monitor(NamedPipeAddress(PIPE, server_pid=1), pipe_connector=fake)
        await mon.connect(timeout=5)
        assert mon.connected
        await mon.close()

    asyncio.run(scenario())
    assert len(fake.calls) == 3


def test_a_pipe_served_by_someone_else_is_refused_at_once() -> None:
    squatted = MonitorError(f"{PIPE} is served by process 666, not by QEMU (pid 4242)")
    fake = PipeFake(fail_first=[squatted] * 5)

    async def scenario() -> None:
        await Monitor(NamedPipeAddress(PIPE, server_pid=4242), pipe_connector=fake).connect(timeout=5)

    with pytest.raises(MonitorError, match="served by process 666"):
        asyncio.run(scenario())
    assert len(fake.calls) == 1  # not retried: it is not "QEMU is not up yet"


def test_a_pipe_held_by_someone_else_times_out_with_a_reason() -> None:
    async def busy(address: NamedPipeAddress, limit: int) -> Any:
        await asyncio.sleep(3600)  # asyncio's connect_pipe retries ERROR_PIPE_BUSY without end

    async def scenario() -> None:
        await Monitor(NamedPipeAddress(PIPE, server_pid=1), pipe_connector=busy).connect(timeout=0.3)

    started = time.monotonic()
    with pytest.raises(MonitorError, match="one client"):
        asyncio.run(scenario())
    assert time.monotonic() - started < 3


def test_a_dead_qemu_is_reported_instead_of_the_missing_pipe() -> None:
    fake = PipeFake(fail_first=[FileNotFoundError(2, "no pipe")] * 5)

    async def scenario() -> None:
        await Monitor(NamedPipeAddress(PIPE), pipe_connector=fake).connect(timeout=5, gone=lambda: "QEMU exited (1)")

    with pytest.raises(MonitorError, match=r"QEMU exited \(1\)"):
        asyncio.run(scenario())


def test_the_default_pipe_connector_refuses_hosts_without_named_pipes() -> None:
    async def scenario() -> None:
        await Monitor(NamedPipeAddress(PIPE)).connect(timeout=5)

    started = time.monotonic()
    with pytest.raises(MonitorError, match="need Windows"):
        asyncio.run(scenario())
    assert time.monotonic() - started < 2  # a clear error, not five seconds of retries


def test_unix_sockets_still_go_through_qemu_qmp_itself() -> None:
    seen: list[str] = []

    async def scenario(path: Path) -> str:
        server = await asyncio.start_unix_server(lambda r, w: fake_qemu(r, w, seen), str(path))
        async with server:
            mon = Monitor(path, pipe_connector=PipeFake())
            await mon.connect(timeout=5)
            out = await mon.execute("query-status")
            await mon.close()
            return str(out["status"])

    with tempfile.TemporaryDirectory(prefix="pq") as tmp:  # short: sun_path holds ~100 bytes
        assert asyncio.run(scenario(Path(tmp) / "qmp.sock")) == "running"
    assert seen == ["qmp_capabilities", "query-status"]


# --- the Windows connector itself, its Win32 parts faked ----------------------------------------------


def test_check_pipe_server() -> None:
    check_pipe_server(NamedPipeAddress(PIPE, server_pid=10), 10)
    check_pipe_server(NamedPipeAddress(PIPE), 999)  # no server named (QEMU's own argv): nothing to check
    with pytest.raises(MonitorError, match="served by process 11, not by QEMU"):
        check_pipe_server(NamedPipeAddress(PIPE, server_pid=10), 11)


@pytest.fixture
def as_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hplatform, "current", lambda: WindowsPlatform())


@pytest.mark.parametrize(
    ("server", "error"),
    [
        (4242, None),
        (666, "served by process 666"),
        (OSError(6, "The handle is invalid"), "cannot tell which process serves"),
    ],
)
def test_open_named_pipe_checks_the_server_before_sending(as_windows: None, server: Any, error: str | None) -> None:
    opened: list[str] = []
    transports: list[asyncio.BaseTransport] = []

    def server_pid_of(transport: asyncio.BaseTransport) -> int:
        transports.append(transport)
        if isinstance(server, BaseException):
            raise server
        return int(server)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()

        async def create_pipe_connection(factory: Any, name: str) -> Any:  # the ProactorEventLoop's
            opened.append(name)
            return await loop.create_connection(factory, sock=ours)

        loop.create_pipe_connection = create_pipe_connection  # type: ignore[attr-defined]
        try:
            reader, writer = await open_named_pipe(
                NamedPipeAddress(PIPE, server_pid=4242), 4096, server_pid_of=server_pid_of
            )
            writer.write(b"ping\n")
            await writer.drain()
            assert theirs.recv(5) == b"ping\n"
            writer.close()
            await writer.wait_closed()
        finally:
            theirs.close()

    if error is None:
        asyncio.run(scenario())
    else:
        with pytest.raises(MonitorError, match=error):
            asyncio.run(scenario())
        assert transports and transports[0].is_closing()  # closed, nothing sent
    assert opened == [PIPE]


def test_open_named_pipe_needs_the_proactor_loop(as_windows: None) -> None:
    async def scenario() -> None:  # a selector loop has no create_pipe_connection
        await open_named_pipe(NamedPipeAddress(PIPE), 4096)

    with pytest.raises(MonitorError, match="ProactorEventLoop"):
        asyncio.run(scenario())


def test_pipe_server_pid_reads_asyncios_pipe_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    class Handle:
        handle = 1234

    class Transport:
        def get_extra_info(self, key: str) -> Any:
            return Handle() if key == "pipe" else None

    monkeypatch.setattr(monitor_mod, "named_pipe_server_pid", lambda handle: {1234: 4242}[handle])
    assert monitor_mod.pipe_server_pid(Transport()) == 4242  # type: ignore[arg-type]
    with pytest.raises(OSError):
        monitor_mod.pipe_server_pid(type("NoPipe", (), {"get_extra_info": lambda self, key: None})())
