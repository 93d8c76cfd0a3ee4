"""Engine-socket benchmark against a real running Pinnace VM: Pinnace's socket vs OpenSSH vs in-guest.

    python tests/benchmarks/bench_socket.py                        # boots its own VM (temp PINNACE_HOME)
    python tests/benchmarks/bench_socket.py --home /tmp/ph --name default      # reuse a running instance
    python tests/benchmarks/bench_socket.py --home /tmp/ph --docker-host unix:///path/docker.sock

Paths, all to the same guest /var/run/docker.sock of the same running VM:
  (a) pinnace       the agent's host unix socket (carried by its OpenSSH ControlMaster once that is up;
                    the agent's own paramiko relay before, or without `ssh`)
  (b) openssh -L    `ssh -N -L HOST.sock:/var/run/docker.sock` with the instance's client key and a
                    known_hosts file pinning the instance's host key
  (c) direct chan   reference: a paramiko channel opened in this process (no unix-socket relay), to
                    split the agent's cost into SSH and relay
  (d) in-guest      floor: the same requests made inside the guest by a tiny static C client
                    (skipped when no static C toolchain is available)

Per round, each path does 500 sequential GET /_ping on *new* connections (latency median, p99) and
one classic-builder POST /build with a 256 MB tar context (throughput = bytes / time from the first
byte sent to the end of the response). Rounds (3) interleave the paths so drift hits all equally.
Latency figures pool every round's samples; throughput is the median of the rounds.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
DOCKERFILE = b"FROM scratch\nLABEL pinnace.bench=1\n"
BENCH_TAG = "pinnace-bench-socket:latest"
GUEST_SOCKET = "/var/run/docker.sock"
GUEST_CLIENT = "/tmp/pinnace-bench-client"
MIB = 1 << 20

# The in-guest floor: same requests, same bytes on the wire, measured inside the guest.
FLOOR_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int dial(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); exit(2); }
    return fd;
}
static void put(int fd, const char *b, size_t n) {
    while (n) { ssize_t w = write(fd, b, n); if (w <= 0) { perror("write"); exit(2); } b += w; n -= (size_t)w; }
}
static void tarhdr(char *h, const char *name, unsigned long long size) {
    unsigned sum = 0; int i;
    memset(h, 0, 512); strncpy(h, name, 99);
    memcpy(h + 100, "0000644", 7); memcpy(h + 108, "0000000", 7); memcpy(h + 116, "0000000", 7);
    snprintf(h + 124, 12, "%011llo", size); snprintf(h + 136, 12, "%011o", 0);
    h[156] = '0'; memcpy(h + 257, "ustar", 6); memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    for (i = 0; i < 512; i++) sum += (unsigned char)h[i];
    snprintf(h + 148, 8, "%06o", sum); h[155] = ' ';
}
int main(int argc, char **argv) {
    static char buf[1 << 20];
    if (argc != 5) { fprintf(stderr, "usage: %s SOCKET ping|bulk N TAG\n", argv[0]); return 2; }
    const char *sock = argv[1]; int n = atoi(argv[3]);
    if (!strcmp(argv[2], "ping")) {
        const char *req = "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n";
        for (int i = 0; i < n; i++) {
            double t0 = now(); int fd = dial(sock); size_t got = 0; ssize_t r;
            put(fd, req, strlen(req));
            while ((r = read(fd, buf + got, sizeof buf - got - 1)) > 0) {
                got += (size_t)r; buf[got] = 0;
                if (got >= 2 && !memcmp(buf + got - 2, "OK", 2) && strstr(buf, "\r\n\r\n")) break;
            }
            close(fd);
            if (r <= 0) { fprintf(stderr, "ping %d: connection closed early\n", i); return 1; }
            printf("%.1f\n", (now() - t0) * 1e6);
        }
        return 0;
    }
    /* bulk: POST /build with a tar context: Dockerfile + n MiB, made here (no file to copy in). */
    static const char dockerfile[] = "FROM scratch\nLABEL pinnace.bench=1\n";
    unsigned long long blob = (unsigned long long)n << 20, df = sizeof dockerfile - 1;
    unsigned long long total = 512 + ((df + 511) / 512) * 512 + 512 + blob + 1024;
    char head[1024], hdr[512], pad[512]; unsigned long long x = 88172645463325252ULL;
    for (size_t i = 0; i < sizeof buf; i += 8) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; memcpy(buf + i, &x, 8); }
    memset(pad, 0, sizeof pad);
    int len = snprintf(head, sizeof head, "POST /build?version=1&rm=1&forcerm=1&q=1&t=%s HTTP/1.1\r\nHost: docker\r\n"
                       "Content-Type: application/x-tar\r\nContent-Length: %llu\r\nConnection: close\r\n\r\n",
                       argv[4], total);
    int fd = dial(sock);
    double t0 = now();
    put(fd, head, (size_t)len);
    tarhdr(hdr, "Dockerfile", df); put(fd, hdr, 512); put(fd, dockerfile, df); put(fd, pad, 512 - df % 512);
    tarhdr(hdr, "blob.bin", blob); put(fd, hdr, 512);
    for (unsigned long long left = blob; left; ) {
        size_t k = left < sizeof buf ? left : sizeof buf; put(fd, buf, k); left -= k;
    }
    put(fd, pad, 512); put(fd, pad, 512);
    size_t got = 0; ssize_t r; char reply[4096];
    while ((r = read(fd, reply + (got < 4000 ? got : 0), got < 4000 ? 4000 - got : 4000)) > 0) got += (size_t)r;
    double dt = now() - t0;
    reply[got < 4000 ? got : 4000] = 0;
    if (strncmp(reply, "HTTP/1.1 200", 12)) { fprintf(stderr, "build failed: %.300s\n", reply); return 1; }
    printf("%llu %.6f\n", total, dt);
    return 0;
}
"""


@dataclass
class PathStats:
    name: str
    pings_us: list[float] = field(default_factory=list)
    bulk_mb_s: list[float] = field(default_factory=list)
    note: str = ""

    def ping_median_ms(self) -> float:
        return statistics.median(self.pings_us) / 1000 if self.pings_us else float("nan")

    def ping_p99_ms(self) -> float:
        if not self.pings_us:
            return float("nan")
        s = sorted(self.pings_us)
        return s[min(len(s) - 1, int(len(s) * 0.99))] / 1000

    def bulk_median(self) -> float:
        return statistics.median(self.bulk_mb_s) if self.bulk_mb_s else float("nan")


# --- the request primitives -------------------------------------------------------------------


def _read_ping_reply(recv: Callable[[int], bytes]) -> None:
    reply = b""
    while not (reply.endswith(b"OK") and b"\r\n\r\n" in reply):
        chunk = recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed early: {reply!r}")
        reply += chunk
    if not reply.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected /_ping reply {reply[:100]!r}")


def unix_ping(path: str) -> float:
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(PING)
        _read_ping_reply(s.recv)
    return (time.perf_counter() - start) * 1e6


def build_context(megabytes: int) -> bytes:
    """A tar: the Dockerfile, then `megabytes` MiB of random data (the same bytes every upload)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(DOCKERFILE), 0o644
        tar.addfile(info, io.BytesIO(DOCKERFILE))
        info = tarfile.TarInfo("blob.bin")
        info.size, info.mode = megabytes * MIB, 0o644
        block = os.urandom(4 * MIB)
        tar.addfile(info, io.BytesIO(block * (megabytes // 4) + block[: (megabytes % 4) * MIB]))
    return buf.getvalue()


def build_request(context_len: int, tag: str) -> bytes:
    return (f"POST /build?version=1&rm=1&forcerm=1&q=1&t={tag} HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/x-tar\r\nContent-Length: {context_len}\r\nConnection: close\r\n\r\n").encode()


def _bulk(sendall: Callable[[bytes], None], recv: Callable[[int], bytes], context: bytes, tag: str) -> float:
    start = time.perf_counter()
    sendall(build_request(len(context), tag))
    view = memoryview(context)
    for offset in range(0, len(view), MIB):
        sendall(view[offset:offset + MIB])
    reply = b""
    while chunk := recv(65536):
        reply += chunk
    elapsed = time.perf_counter() - start
    if not reply.startswith(b"HTTP/1.1 200") or b'"errorDetail"' in reply:
        raise RuntimeError(f"build failed: {reply[:400]!r}")
    return len(context) / elapsed / 1e6


def unix_bulk(path: str, context: bytes) -> float:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(600)
        s.connect(path)
        return _bulk(s.sendall, s.recv, context, BENCH_TAG)


# --- the paths --------------------------------------------------------------------------------


class Instance:
    """A running Pinnace instance: its status, keys, and an ssh command line that pins its key."""

    def __init__(self, home: Path, name: str, work: Path) -> None:
        from hypervisor.control import ControlClient
        from hypervisor.keys import ensure_instance_keys
        from hypervisor.paths import Paths

        self.paths = Paths.for_instance(name, {"PINNACE_HOME": str(home)})
        status = ControlClient(self.paths.control_socket, timeout=10).status()
        if status.state != "running" or not status.ssh_port:
            raise SystemExit(f"instance {name!r} under {home} is not running ({status.state})")
        self.status = status
        self.keys = ensure_instance_keys(self.paths.keys_dir, name)
        self.known_hosts = work / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{status.ssh_port} {' '.join(self.keys.host_public.split()[:2])}\n")
        self.known_hosts.chmod(0o600)

    def ssh_argv(self, *extra: str) -> list[str]:
        return [shutil.which("ssh") or "ssh", "-F", "/dev/null", "-i", str(self.keys.client_key),
                "-p", str(self.status.ssh_port), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "LogLevel=ERROR", *extra, "root@127.0.0.1"]


class OpenSSHForward:
    def __init__(self, inst: Instance, local: Path) -> None:
        self.local = local
        argv = inst.ssh_argv("-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                             "-o", "StreamLocalBindMask=0177", "-L", f"{local}:{GUEST_SOCKET}")
        self.proc = subprocess.Popen(argv)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ssh -L exited with {self.proc.returncode}")
            if local.exists():
                try:
                    unix_ping(str(local))
                    return
                except (OSError, RuntimeError):
                    pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError("ssh -L did not come up")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class DirectChannel:
    """Reference: the same SSH channel kind as the agent's, but no unix socket relay in between."""

    def __init__(self, inst: Instance) -> None:
        from hypervisor.ssh import GuestSSH, SSHTarget

        self.ssh = GuestSSH(SSHTarget("127.0.0.1", int(inst.status.ssh_port or 0), "root", inst.keys.client_key,
                                      inst.keys.host_public, inst.paths.instance))
        self.ssh.connect(timeout=30)

    def ping(self) -> float:
        start = time.perf_counter()
        chan = self.ssh.open_unix_channel(GUEST_SOCKET, timeout=30)
        try:
            chan.sendall(PING)
            _read_ping_reply(chan.recv)
        finally:
            chan.close()
        return (time.perf_counter() - start) * 1e6

    def bulk(self, context: bytes) -> float:
        chan = self.ssh.open_unix_channel(GUEST_SOCKET, timeout=30)
        try:
            chan.settimeout(600)
            return _bulk(chan.sendall, chan.recv, context, BENCH_TAG)
        finally:
            chan.close()

    def close(self) -> None:
        self.ssh.close()


class GuestFloor:
    """A static C client copied into the guest's /tmp; measures inside the guest."""

    def __init__(self, inst: Instance, work: Path) -> None:
        self.inst = inst
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("no C compiler")
        src, binary = work / "floor.c", work / "floor"
        src.write_text(FLOOR_C)
        built = subprocess.run([cc, "-O2", "-static", "-o", str(binary), str(src)], capture_output=True, text=True)
        if built.returncode != 0:
            raise RuntimeError(f"cannot build a static client: {built.stderr.strip()[-200:]}")
        with open(binary, "rb") as f:
            copied = subprocess.run(self.inst.ssh_argv() + [f"cat > {GUEST_CLIENT} && chmod 0755 {GUEST_CLIENT}"],
                                    stdin=f, capture_output=True, text=True, timeout=120)
        if copied.returncode != 0:
            raise RuntimeError(f"cannot copy the client into the guest: {copied.stderr.strip()}")

    def _run(self, *args: str, timeout: float) -> str:
        proc = subprocess.run(self.inst.ssh_argv() + [" ".join([GUEST_CLIENT, GUEST_SOCKET, *args])],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"in-guest client failed: {proc.stderr.strip()}")
        return proc.stdout

    def pings(self, count: int) -> list[float]:
        return [float(x) for x in self._run("ping", str(count), "-", timeout=600).split()]

    def bulk(self, megabytes: int) -> float:
        size, seconds = self._run("bulk", str(megabytes), BENCH_TAG, timeout=900).split()
        return int(size) / float(seconds) / 1e6

    def close(self) -> None:
        subprocess.run(self.inst.ssh_argv() + [f"rm -f {GUEST_CLIENT}"], capture_output=True, timeout=60)


# --- running ----------------------------------------------------------------------------------


def start_own_instance(home: Path, name: str) -> dict[str, str]:
    from vmimage import locations

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PINNACE_", "DOCKER_"))}
    env.update(PINNACE_HOME=str(home), PINNACE_IMAGE_DIR=str(locations.default_image_dir("x86_64")),
               DOCKER_CONFIG=str(home / "docker-config"))
    print(f"starting a Pinnace VM under {home} ...", flush=True)
    started = subprocess.run([sys.executable, "-m", "app.cli", "--name", name, "start"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        raise SystemExit(f"pinnace start failed:\n{started.stdout}\n{started.stderr}")
    return env


def stop_own_instance(env: dict[str, str], name: str) -> None:
    subprocess.run([sys.executable, "-m", "app.cli", "--name", name, "stop"], cwd=ROOT, env=env,
                   capture_output=True, text=True, timeout=300)


def remove_bench_image(socket_path: str) -> None:
    conn = http.client.HTTPConnection("docker", timeout=60)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    conn.sock = sock
    try:
        conn.request("DELETE", f"/images/{BENCH_TAG}?force=1")
        conn.getresponse().read()
    finally:
        conn.close()


def run(args: argparse.Namespace, home: Path, work: Path) -> tuple[list[PathStats], Instance]:
    inst = Instance(home, args.name, work)
    pinnace_sock = args.docker_host.removeprefix("unix://") if args.docker_host else str(inst.paths.docker_socket)
    ossh_sock = work / "ossh-docker.sock"
    print(f"instance {args.name}: Docker {inst.status.engine_version} ({inst.status.accel}), "
          f"ssh port {inst.status.ssh_port}", flush=True)
    print(f"preparing a {args.bulk_mb} MB build context ...", flush=True)
    context = build_context(args.bulk_mb)

    a = PathStats("(a) pinnace socket")
    b = PathStats("(b) openssh ssh -L")
    c = PathStats("(c) paramiko channel, no relay")
    d = PathStats("(d) in-guest (floor)")
    ossh = OpenSSHForward(inst, ossh_sock)
    direct = DirectChannel(inst)
    floor: GuestFloor | None = None
    if not args.no_floor:
        try:
            floor = GuestFloor(inst, work)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            d.note = f"skipped: {exc}"
    try:
        pingers: list[tuple[PathStats, Callable[[], float]]] = [
            (a, lambda: unix_ping(pinnace_sock)), (b, lambda: unix_ping(str(ossh_sock))), (c, direct.ping)]
        bulkers: list[tuple[PathStats, Callable[[], float]]] = [
            (a, lambda: unix_bulk(pinnace_sock, context)), (b, lambda: unix_bulk(str(ossh_sock), context)),
            (c, lambda: direct.bulk(context))]
        if floor is not None:
            bulkers.append((d, lambda: floor.bulk(args.bulk_mb)))
        for _, ping in pingers:  # warm-up: first connections, caches, JIT-less but still
            for _ in range(10):
                ping()
        if floor is not None:
            floor.pings(10)
        for rnd in range(1, args.rounds + 1):
            order = pingers if rnd % 2 else list(reversed(pingers))
            for stats, ping in order:
                t = time.monotonic()
                stats.pings_us.extend(ping() for _ in range(args.pings))
                print(f"  round {rnd}: {stats.name:<32} {args.pings} pings in {time.monotonic() - t:5.1f} s",
                      flush=True)
            if floor is not None:
                d.pings_us.extend(floor.pings(args.pings))
                print(f"  round {rnd}: {d.name:<32} {args.pings} pings", flush=True)
            if args.bulk_mb:
                for stats, bulk in (bulkers if rnd % 2 else list(reversed(bulkers))):
                    stats.bulk_mb_s.append(bulk())
                    print(f"  round {rnd}: {stats.name:<32} bulk {stats.bulk_mb_s[-1]:6.1f} MB/s", flush=True)
    finally:
        ossh.close()
        direct.close()
        if floor is not None:
            floor.close()
        if args.bulk_mb:
            try:
                remove_bench_image(pinnace_sock)
            except OSError:
                pass
    return [a, b, c, d], inst


def verdict(a: PathStats, b: PathStats) -> str:
    def cmp(ours: float, theirs: float, lower_is_better: bool) -> str:
        ratio = ours / theirs
        better = ratio < 0.9 if lower_is_better else ratio > 1.1
        worse = ratio > 1.1 if lower_is_better else ratio < 0.9
        return f"{ratio:.2f}x ({'better' if better else 'worse' if worse else 'on par'})"

    parts = [f"ping median {a.ping_median_ms():.2f} vs {b.ping_median_ms():.2f} ms "
             f"{cmp(a.ping_median_ms(), b.ping_median_ms(), True)}",
             f"p99 {a.ping_p99_ms():.2f} vs {b.ping_p99_ms():.2f} ms {cmp(a.ping_p99_ms(), b.ping_p99_ms(), True)}"]
    if a.bulk_mb_s and b.bulk_mb_s:
        parts.append(f"bulk {a.bulk_median():.1f} vs {b.bulk_median():.1f} MB/s "
                     f"{cmp(a.bulk_median(), b.bulk_median(), False)}")
    return "verdict: pinnace vs openssh -L: " + "; ".join(parts)


def print_table(rows: list[PathStats], inst: Instance, args: argparse.Namespace) -> None:
    print(f"\nengine socket, Docker {inst.status.engine_version}, accel {inst.status.accel}; {args.rounds} "
          f"interleaved rounds of {args.pings} sequential new-connection GET /_ping and one "
          f"{args.bulk_mb} MB POST /build context upload")
    print(f"{'path':<34} {'ping median ms':>15} {'ping p99 ms':>12} {'bulk MB/s (median)':>19}  {'bulk per round':<24}")
    for r in rows:
        if not r.pings_us and not r.bulk_mb_s:
            print(f"{r.name:<34} {r.note or 'skipped'}")
            continue
        per_round = " ".join(f"{x:.1f}" for x in r.bulk_mb_s) or "-"
        bulk = f"{r.bulk_median():19.1f}" if r.bulk_mb_s else f"{'-':>19}"
        print(f"{r.name:<34} {r.ping_median_ms():15.2f} {r.ping_p99_ms():12.2f} {bulk}  {per_round:<24}")
    print(verdict(rows[0], rows[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, help="PINNACE_HOME of a running instance to reuse (default: boot one)")
    p.add_argument("--name", default="default", help="instance name (default: default)")
    p.add_argument("--docker-host", help="unix://... of Pinnace's engine socket (default: the instance's)")
    p.add_argument("--pings", type=int, default=500)
    p.add_argument("--bulk-mb", type=int, default=256, help="build context size (0: no bulk test)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-floor", action="store_true", help="skip the in-guest floor")
    args = p.parse_args(argv)
    if args.docker_host and not args.docker_host.startswith("unix://"):
        p.error("--docker-host must be unix://PATH")
    with tempfile.TemporaryDirectory(prefix="pinbench-") as tmp:
        work = Path(tmp)
        own_env = None
        home = args.home
        if home is None:
            home = work / "home"
            home.mkdir()
            own_env = start_own_instance(home, args.name)
        try:
            rows, inst = run(args, home, work)
        finally:
            if own_env is not None:
                stop_own_instance(own_env, args.name)
    print_table(rows, inst, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
