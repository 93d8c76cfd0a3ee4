"""Micro-benchmark of the engine-socket path: our forwarder vs `ssh -L` vs a direct connection.

    python tests/benchmarks/bench_forward.py                 # local sshd + local test servers
    python tests/benchmarks/bench_forward.py --host 127.0.0.1 --port 2222 --user root \
        --key ~/.local/share/pinnace/keys/default/id_ed25519 --host-public "ssh-ed25519 AAAA..." \
        --ping-socket /var/run/docker.sock --bulk-socket ""   # a real guest (bulk needs a sink)

Measures /_ping latency over 500 sequential *new* connections (median, p99) and the throughput
of one bulk upload to a socket that counts bytes and answers the total after EOF, for each path in
interleaved rounds (median of 3), and prints Pinnace's ratios to OpenSSH's `ssh -L`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from sshd_fixture import HostSSHD, UnixServer, ping_handler, sink_handler  # noqa: E402, I001

from hypervisor.agent.socket_carrier import SocketCarrier  # noqa: E402
from hypervisor.forward import UnixSocketForwarder  # noqa: E402
from hypervisor.paths import Paths  # noqa: E402
from hypervisor.ssh import GuestSSH, SSHTarget  # noqa: E402

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"


@dataclass
class Row:
    name: str
    median_ms: float
    p99_ms: float
    mb_per_s: float | None


def read_ping_reply(recv: Callable[[int], bytes]) -> None:
    """Read until the /_ping answer's body ("OK") has arrived, from a socket or a channel."""
    reply = b""
    while not reply.endswith(b"OK"):
        chunk = recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed early: {reply!r}")
        reply += chunk


def ping_once(path: str) -> float:
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(PING)
        read_ping_reply(s.recv)
    return time.perf_counter() - start


def ping_stats(path: str, count: int, once: Callable[[str], float] = ping_once) -> tuple[float, float]:
    for _ in range(10):
        once(path)  # warm-up
    samples = sorted(once(path) for _ in range(count))
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return statistics.median(samples) * 1000, p99 * 1000


def upload(path: str, megabytes: int) -> float:
    block = os.urandom(1 << 20)
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(path)
        for _ in range(megabytes):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(64):
            answer += chunk
    elapsed = time.perf_counter() - start
    if int(answer or b"0") != megabytes << 20:
        raise RuntimeError(f"sink counted {answer!r}, sent {megabytes << 20}")
    return (megabytes << 20) / elapsed / 1e6


def paramiko_ping_once(ssh: GuestSSH, remote: str) -> float:
    """The same request on a channel opened straight from paramiko: no forwarder, no relay."""
    start = time.perf_counter()
    chan = ssh.open_unix_channel(remote)
    try:
        chan.settimeout(10)
        chan.sendall(PING)
        read_ping_reply(chan.recv)
    finally:
        chan.close()
    return time.perf_counter() - start


def paramiko_upload(ssh: GuestSSH, remote: str, megabytes: int) -> float:
    block = os.urandom(1 << 20)
    start = time.perf_counter()
    chan = ssh.open_unix_channel(remote)
    try:
        chan.settimeout(120)
        for _ in range(megabytes):
            chan.sendall(block)
        chan.shutdown_write()
        answer = b""
        while chunk := chan.recv(64):
            answer += chunk
    finally:
        chan.close()
    elapsed = time.perf_counter() - start
    if int(answer or b"0") != megabytes << 20:
        raise RuntimeError(f"sink counted {answer!r}, sent {megabytes << 20}")
    return (megabytes << 20) / elapsed / 1e6


def wait_for_socket(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        time.sleep(0.02)
    raise RuntimeError(f"{path} did not appear")


def _child(mode: str, *argv: str) -> subprocess.Popen:
    """Run a role in its own process (as in real life) so the client's GIL is not shared."""
    proc = subprocess.Popen([sys.executable, __file__, mode, *argv], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{mode} child failed to start")
    return proc


def _stop_child(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


def serve_test_servers(work: Path) -> None:
    """Child process: the guest-side ping and sink servers."""
    servers = [UnixServer(work / "ping.sock", ping_handler), UnixServer(work / "sink.sock", sink_handler)]
    print("ready", flush=True)
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        for server in servers:
            server.close()


def carried_paths(work: Path, name: str) -> Paths:
    """Where the agent of instance `name` would serve its engine socket, under `work`."""
    return Paths.for_instance(name, {"PINNACE_HOME": str(work / "home")})


def serve_forwarders(target_json: str, work: Path, ping_remote: str, bulk_remote: str, transport: str) -> None:
    """Child process: our forwarder, as the host agent runs it: with its OpenSSH master carrying
    the bytes ("openssh"), or on paramiko channels alone (its fallback, "paramiko")."""
    raw = json.loads(target_json)
    target = SSHTarget(**{**raw, "client_key": Path(raw["client_key"])})
    ssh = GuestSSH(target)
    ssh.connect()
    with ExitStack() as stack:
        for name, remote in (("ping", ping_remote), ("bulk", bulk_remote)):
            if not remote:
                continue
            if transport == "paramiko":
                endpoint = work / f"{name}.sock"
            else:
                paths = carried_paths(work, name)
                paths.ensure_dirs()
                endpoint = paths.docker_socket
            fwd = UnixSocketForwarder(endpoint, lambda remote=remote: ssh.open_unix_channel(remote), name)
            stack.enter_context(fwd)
            if transport == "openssh":
                stack.enter_context(carried(paths, target, remote))
        print("ready", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    ssh.close()


@contextmanager
def carried(paths: Paths, target: SSHTarget, remote: str) -> Iterator[None]:
    """The agent's OpenSSH master on a forwarder's endpoint, once it serves."""
    states: list[str] = []
    carrier = SocketCarrier(paths, paths.docker_socket, target, remote, states.append)
    carrier.start()
    try:
        deadline = time.monotonic() + 30
        while not (states and states[-1].endswith("ControlMaster")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ssh master did not take the socket: {states}")
            time.sleep(0.05)
        yield
    finally:
        carrier.close()


@contextmanager
def openssh_forward(target: SSHTarget, work: Path, forwards: dict[Path, str]) -> Iterator[None]:
    """`ssh -N -L local.sock:remote.sock` with the same key and the same pinned host key."""
    known = work / "known_hosts"
    known.write_text(f"[{target.host}]:{target.port} {' '.join(target.host_public.split()[:2])}\n")
    cmd = [
        shutil.which("ssh") or "ssh", "-N", "-F", "/dev/null",
        "-i", str(target.client_key), "-p", str(target.port),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
        "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
        "-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr",
    ]  # fmt: skip
    for local, remote in forwards.items():
        cmd += ["-L", f"{local}:{remote}"]
    cmd.append(f"{target.user}@{target.host}")
    proc = subprocess.Popen(cmd)
    try:
        for local in forwards:
            wait_for_socket(local)
        yield
    finally:
        proc.terminate()
        proc.wait(5)


def measure(path: Ends, args: argparse.Namespace) -> tuple[float, float, float | None]:
    if path.ssh is not None:  # paramiko alone, in this process
        ssh = path.ssh
        median, p99 = ping_stats(str(path.ping), args.pings, lambda remote: paramiko_ping_once(ssh, remote))
        rate = paramiko_upload(ssh, str(path.bulk), args.bulk_mb) if path.bulk is not None else None
        return median, p99, rate
    median, p99 = ping_stats(str(path.ping), args.pings)
    rate = upload(str(path.bulk), args.bulk_mb) if path.bulk is not None else None
    return median, p99, rate


@dataclass
class Ends:
    """The local sockets of one path: where pings and the bulk upload go."""

    name: str
    ping: Path
    bulk: Path | None
    ssh: GuestSSH | None = None  # measured over this transport directly, not through a socket


def run(args: argparse.Namespace, work: Path) -> list[Row]:
    """Every path measured once per round, the order rotating, so drift on a noisy host is shared."""
    with ExitStack() as stack:
        if args.host is None:  # self-contained: local sshd and local servers stand in for the guest
            sshd = HostSSHD(work / "sshd")
            sshd.start()
            stack.callback(sshd.stop)
            target = sshd.target()
            stack.callback(_stop_child, _child("--_servers", str(work)))
            ping_remote, bulk_remote = str(work / "ping.sock"), str(work / "sink.sock")
        else:
            target = SSHTarget(args.host, args.port, args.user, Path(args.key), args.host_public, "bench")
            ping_remote, bulk_remote = args.ping_socket, args.bulk_socket or ""
        raw = json.dumps({**target.__dict__, "client_key": str(target.client_key)})
        paths: list[Ends] = []
        carried_at = work / "carried"
        stack.callback(_stop_child, _child("--_forwarder", raw, str(carried_at), ping_remote, bulk_remote, "openssh"))
        paths.append(Ends(PINNACE, carried_paths(carried_at, "ping").docker_socket,
                          carried_paths(carried_at, "bulk").docker_socket if bulk_remote else None))
        where = work / "fwd"
        where.mkdir(mode=0o700)
        stack.callback(_stop_child, _child("--_forwarder", raw, str(where), ping_remote, bulk_remote, "paramiko"))
        paths.append(Ends("  paramiko fallback", where / "ping.sock", where / "bulk.sock" if bulk_remote else None))
        # What any paramiko-based forwarder is bounded by: the same work with no socket or relay.
        direct_ssh = GuestSSH(target)
        direct_ssh.connect()
        stack.callback(direct_ssh.close)
        paths.append(Ends(PARAMIKO, Path(ping_remote), Path(bulk_remote) if bulk_remote else None, direct_ssh))
        local = {work / "ossh-ping.sock": ping_remote}
        if bulk_remote:
            local[work / "ossh-bulk.sock"] = bulk_remote
        stack.enter_context(openssh_forward(target, work, local))
        paths.append(Ends(OPENSSH, work / "ossh-ping.sock", work / "ossh-bulk.sock" if bulk_remote else None))
        if args.host is None:
            paths.append(Ends("direct (floor)", Path(ping_remote), Path(bulk_remote)))
        results: dict[str, list[tuple[float, float, float | None]]] = {p.name: [] for p in paths}
        for round_no in range(args.rounds):
            for path in paths[round_no % len(paths):] + paths[:round_no % len(paths)]:
                results[path.name].append(measure(path, args))
            logging.info("round %d done", round_no + 1)
    rows = []
    for path in paths:
        got = results[path.name]
        rates = [r for _, _, r in got if r is not None]
        rows.append(Row(path.name, statistics.median(m for m, _, _ in got), statistics.median(p for _, p, _ in got),
                        statistics.median(rates) if rates else None))
    return rows


PINNACE = "pinnace (ssh master)"
OPENSSH = "openssh ssh -L"
PARAMIKO = "  paramiko alone"


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(f"\n{args.pings} sequential new connections GET /_ping; bulk upload {args.bulk_mb} MB; "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'path':<24} {'ping median ms':>15} {'ping p99 ms':>12} {'upload MB/s':>12}")
    for r in rows:
        rate = f"{r.mb_per_s:12.1f}" if r.mb_per_s is not None else f"{'-':>12}"
        print(f"{r.name:<24} {r.median_ms:15.3f} {r.p99_ms:12.3f} {rate}")
    ours, openssh = rows[0], next(r for r in rows if r.name == OPENSSH)
    print(f"\nPinnace vs OpenSSH (>= 1.0 is as fast or faster): new connections "
          f"{openssh.median_ms / ours.median_ms:.2f}x", end="")
    if ours.mb_per_s and openssh.mb_per_s:
        print(f", bulk upload {ours.mb_per_s / openssh.mb_per_s:.2f}x")
    else:
        print()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--_servers"], ["--_forwarder"]):
        # block before any thread starts so sigwait() receives the stop signal in every child
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    if argv[:1] == ["--_servers"]:
        serve_test_servers(Path(argv[1]))
        return 0
    if argv[:1] == ["--_forwarder"]:
        serve_forwarders(argv[1], Path(argv[2]), argv[3], argv[4], argv[5])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="guest sshd host (default: start a local sshd)")
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--user", default=getpass.getuser())
    p.add_argument("--key", help="client private key")
    p.add_argument("--host-public", help='pinned host key line, "ssh-ed25519 AAAA..."')
    p.add_argument("--ping-socket", default="/var/run/docker.sock", help="remote socket answering /_ping")
    p.add_argument("--bulk-socket", default="", help="remote socket that counts bytes ('' to skip)")
    p.add_argument("--pings", type=int, default=500)
    p.add_argument("--bulk-mb", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.host is not None and not (args.key and args.host_public):
        p.error("--host needs --key and --host-public")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="pinbench-") as tmp:
        rows = run(args, Path(tmp))
    print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
