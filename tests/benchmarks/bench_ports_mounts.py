"""Published ports and shared folders, measured.

    PINNACE_HOME=... python tests/benchmarks/bench_ports_mounts.py --name default [--no-floor]
        [--mb 256] [--requests 500] [--files 5000] [--rounds 3]
        [--variants 9p:mmap,virtiofs:none,virtiofs:auto] [--no-ports] [--no-mounts] [--no-rss]

Ports (on the running instance --name): a 256 MB HTTP download and 500 small requests (new
connection each) through a published port (`-p P:80`, forwarded by the agent with hostfwd_add),
against the floor: a bare QEMU booted by this script with the forward on its command line and
busybox httpd in the guest itself.

Mounts (in a VM this script boots, with the production argv, guest boot script and virtiofsd
launcher): one share per variant (transport:cache) of a folder under $HOME, all in the same VM, so
every transport sees the same guest, host and moment. Each round runs the same static binary on
the host (native, the baseline) and in a container over each share, in rotating order (rounds are
interleaved so that host noise hits every variant alike): sequential write/read of a 256 MB file
(the guest's page cache dropped before the read) and 5,000 x 1 KB create/stat/read/delete.
Medians over the rounds, ratios to native. Memory: QEMU's RSS (and virtiofsd's PSS) after boot, for
a VM with the guest RAM in a shared memfd (virtiofs) and for one without (9p only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hypervisor import mounts, virtiofsd  # noqa: E402
from hypervisor.forward import UnixSocketForwarder  # noqa: E402
from hypervisor.keys import authorized_keys_line, ensure_instance_keys  # noqa: E402
from hypervisor.mounts import GuestShare  # noqa: E402
from hypervisor.paths import Paths  # noqa: E402
from hypervisor.spec import MachineSpec, build_argv  # noqa: E402
from hypervisor.ssh import GuestSSH, SSHTarget  # noqa: E402
from tests import guestexec  # noqa: E402
from tests.imagekit import busybox_image  # noqa: E402

MOUNT_OPTS = "trans=virtio,version=9p2000.L,msize=512000,access=client"


def bench_spec(name: str, work: Path, image_dir: Path, image: Any, keys: Any, ssh_port: int, memory_mib: int,
               **extra: Any) -> MachineSpec:
    """A bare VM of the product image, set up by hand in `work` (no agent), as both benchmarks boot it."""
    return MachineSpec(
        name=name, arch="x86_64", cpus=2, memory_mib=memory_mib, kernel=image.path_of(image_dir, "kernel"),
        initrd=image.path_of(image_dir, "initrd"), rootfs=image.path_of(image_dir, "rootfs"),
        cmdline=image.cmdline, data_disk=work / "data.qcow2", ssh_host_port=ssh_port,
        fw_cfg=(("opt/pinnace/ssh_host_key", keys.host_key),
                ("opt/pinnace/authorized_keys", work / "authorized_keys"),
                ("opt/pinnace/hostname", work / "hostname"), ("opt/pinnace/shares", work / "shares")),
        serial_log=work / "serial.log", qmp_socket=work / "qmp.sock", pidfile=work / "qemu.pid", **extra)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(port: int, path: str, sink: bool = True) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        total = 0
        while chunk := s.recv(1 << 20):
            total += len(chunk)
    return total


def wait_http(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if http(port, "/s") > 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"nothing answers HTTP on 127.0.0.1:{port}")


def measure_port(port: int, mb: int, requests: int) -> dict[str, float]:
    wait_http(port)
    start = time.perf_counter()
    got = http(port, "/big")
    elapsed = time.perf_counter() - start
    if got < mb << 20:
        raise RuntimeError(f"short download: {got} bytes")
    for _ in range(10):
        http(port, "/s")
    samples = []
    for _ in range(requests):
        t = time.perf_counter()
        http(port, "/s")
        samples.append(time.perf_counter() - t)
    samples.sort()
    return {"mb_s": mb / elapsed, "median_ms": statistics.median(samples) * 1000,
            "p99_ms": samples[int(len(samples) * 0.99) - 1] * 1000}


SERVE = "mkdir -p {www} && echo small > {www}/s && dd if=/dev/zero of={www}/big bs=1M count={mb} 2>/dev/null"


def docker(env: dict[str, str], *args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr}")
    return proc.stdout


@contextlib.contextmanager
def floor_vm(accel: str, mb: int) -> Iterator[int]:
    """A bare QEMU with `hostfwd=tcp:127.0.0.1:P-:8000` on its command line, httpd in the guest."""
    from hypervisor.agent import guest_image

    work = Path(tempfile.mkdtemp(prefix="pinnace-floor-"))
    proc = None
    try:
        found = guest_image.locate("x86_64")
        image_dir, image = found.directory, found.manifest
        keys = ensure_instance_keys(work / "keys", "floor")
        (work / "authorized_keys").write_text(authorized_keys_line(keys.client_public) + "\n")
        (work / "hostname").write_text("floor\n")
        (work / "shares").write_text("")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "data.qcow2"), "8G"], check=True)
        ssh_port, http_port = free_port(), free_port()
        spec = bench_spec("floor", work, image_dir, image, keys, ssh_port, 2048,
                          host_forwards=(f"tcp:127.0.0.1:{http_port}-:8000",))
        qemu = Path(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
        proc = subprocess.Popen(build_argv(qemu, spec, accel, "linux"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ssh = GuestSSH(SSHTarget("127.0.0.1", ssh_port, "root", keys.client_key, keys.host_public, "floor"))
        ssh.wait_until_reachable(time.monotonic() + 300)
        www = "/tmp/www"
        guestexec.run(ssh, SERVE.format(www=www, mb=mb) + f" && (busybox httpd -p 8000 -h {www} &)", timeout=300)
        yield http_port
        ssh.close()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


# --- mounts -----------------------------------------------------------------------------------

FSBENCH_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
int main(int argc, char **argv) {
    const char *d = argv[1]; int mb = atoi(argv[2]), files = atoi(argv[3]);
    static char big[1 << 20], kb[1024], path[4096];
    memset(big, 'x', sizeof big); memset(kb, 'y', sizeof kb);
    mkdir(d, 0755);
    snprintf(path, sizeof path, "%s/big", d);
    double a = now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (int i = 0; i < mb; i++) if (write(fd, big, sizeof big) != sizeof big) return 2;
    fsync(fd); close(fd);
    printf("write %.1f\n", now() - a);
    if (getenv("DROP")) {  /* the guest's page cache, so the read comes over the share */
        int c = open("/proc/sys/vm/drop_caches", O_WRONLY); if (c >= 0) { write(c, "3", 1); close(c); }
    }
    a = now(); fd = open(path, O_RDONLY);
    while (read(fd, big, sizeof big) > 0) {}
    close(fd); printf("read %.1f\n", now() - a);
    unlink(path);
    a = now();
    for (int i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/f%d", d, i);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, kb, sizeof kb) != sizeof kb) return 3;
        close(fd);
    }
    printf("create %.1f\n", now() - a);
    struct stat st; a = now();
    for (int i = 0; i < files; i++) { snprintf(path, sizeof path, "%s/f%d", d, i); if (stat(path, &st)) return 4; }
    printf("stat %.1f\n", now() - a);
    a = now();
    for (int i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/f%d", d, i);
        fd = open(path, O_RDONLY); if (fd < 0 || read(fd, kb, sizeof kb) != sizeof kb) return 5; close(fd);
    }
    printf("readsmall %.1f\n", now() - a);
    a = now();
    for (int i = 0; i < files; i++) { snprintf(path, sizeof path, "%s/f%d", d, i); unlink(path); }
    printf("delete %.1f\n", now() - a);
    rmdir(d);
    return 0;
}
"""


def build_fsbench(directory: Path) -> Path:
    """The same static binary runs on the host and in the container."""
    (directory / "fsbench.c").write_text(FSBENCH_C)
    out = directory / "fsbench"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(directory / "fsbench.c")], check=True)
    return out


def parse_ms(out: str) -> dict[str, float]:
    return {k: float(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


def host_fs(binary: Path, directory: Path, mb: int, files: int) -> dict[str, float]:
    out = subprocess.run([str(binary), str(directory), str(mb), str(files)], capture_output=True, text=True,
                         check=True)
    return parse_ms(out.stdout)


def container_fs(env: dict[str, str], image: str, tools: Path, bind: Path | None, mb: int,
                 files: int) -> dict[str, float]:
    target = "/tmp/bench" if bind is None else "/bench/run"
    args = ["run", "--rm", "--privileged", "-e", "DROP=1", "-v", f"{tools}:/tools:ro"]
    if bind is not None:
        args += ["-v", f"{bind}:/bench"]
    return parse_ms(docker(env, *args, image, "/tools/fsbench", target, str(mb), str(files)))


def remount_9p(ssh: GuestSSH, tag: str, path: str, cache: str) -> None:
    res = guestexec.run(ssh, f"cd / && umount -l '{path}' && mount -t 9p -o {MOUNT_OPTS},cache={cache} {tag} '{path}'",
                        timeout=60)
    if res.exit_status != 0:
        raise RuntimeError(f"remount {path} cache={cache}: {bytes(res.stderr).decode(errors='replace')}")


def row(name: str, vals: dict[str, float], base: dict[str, float], mb: int) -> str:
    def rate(k: str) -> str:
        return f"{mb / (vals[k] / 1000):8.1f} MB/s" if vals[k] else "     inf"
    cells = [f"{name:<24}", rate("write"), rate("read")]
    cells += [f"{vals[k]:7.0f} ms" for k in SMALL]
    ratio = sum(vals[k] for k in SMALL) / max(1.0, sum(base[k] for k in SMALL))
    write, read = vals["write"] / max(base["write"], 1), vals["read"] / max(base["read"], 1)
    cells.append(f"x{ratio:6.1f}  (time: write x{write:.1f}, read x{read:.1f})")
    return "  ".join(cells)


SMALL = ("create", "stat", "readsmall", "delete")


@dataclass(frozen=True)
class Variant:
    transport: str  # 9p | virtiofs
    cache: str  # 9p: the mount's cache=; virtiofs: virtiofsd's --cache / -o cache=

    @property
    def label(self) -> str:
        return f"{self.transport} cache={self.cache}"

    @property
    def dirname(self) -> str:
        return f"{self.transport}-{self.cache}"


def parse_variants(text: str) -> list[Variant]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        transport, _, cache = part.partition(":")
        if transport not in mounts.TRANSPORTS:
            raise SystemExit(f"--variants: unknown transport {transport!r}")
        out.append(Variant(transport, cache or ("mmap" if transport == "9p" else virtiofsd.CACHE)))
    return out


def memory_of(pid: int) -> dict[str, int]:
    """KiB: VmRSS, RssAnon, RssShmem (QEMU's guest RAM is there with a shared memfd), Pss."""
    out: dict[str, int] = {}
    for name in ("status", "smaps_rollup"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssShmem", "RssFile", "Pss") and rest.split():
                    out[key] = int(rest.split()[0])
    return out


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (the C virtiofsd forks into its pid namespace)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in children.read_text().split()]
    return found


@dataclass
class BenchVM:
    env: dict[str, str]
    ssh: GuestSSH
    qemu_pid: int
    daemon_pids: list[int]


@contextlib.contextmanager
def share_vm(accel: str, shares: list[tuple[GuestShare, str]], memory_mib: int = 2048) -> Iterator[BenchVM]:
    """A VM like an instance's (production argv, boot script, virtiofsd launcher), sharing
    `shares` ((share, virtiofsd cache) pairs); its engine socket forwarded for the docker CLI."""
    from hypervisor.agent import guest_image

    work = Path(tempfile.mkdtemp(prefix="pinnace-fsbench-"))  # short: the sockets live here
    proc, started, ssh, fwd = None, [], None, None
    try:
        found = guest_image.locate("x86_64")
        image_dir, image = found.directory, found.manifest
        keys = ensure_instance_keys(work / "keys", "fsbench")
        (work / "authorized_keys").write_text(authorized_keys_line(keys.client_public) + "\n")
        (work / "hostname").write_text("fsbench\n")
        guest = [share for share, _ in shares]
        mounts.write_fw_cfg(work / "shares", guest)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "data.qcow2"), "16G"], check=True)
        if mounts.needs_shared_memory(guest):
            daemon, why = virtiofsd.locate()
            if daemon is None:
                raise RuntimeError(f"virtiofs: {why}")
            for cache in sorted({c for s, c in shares if s.transport == "virtiofs"}):
                group = [s for s, c in shares if s.transport == "virtiofs" and c == cache]
                started += virtiofsd.start(daemon, group, work, work, work, cache=cache)
        ssh_port = free_port()
        spec = bench_spec("fsbench", work, image_dir, image, keys, ssh_port, memory_mib,
                          shares=tuple(guest), share_socket_dir=work)
        qemu = Path(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
        with open(work / "qemu.log", "wb") as qlog:
            proc = subprocess.Popen(build_argv(qemu, spec, accel, "linux"), stdout=qlog, stderr=qlog)
        ssh = GuestSSH(SSHTarget("127.0.0.1", ssh_port, "root", keys.client_key, keys.host_public, "fsbench"))
        ssh.wait_until_reachable(time.monotonic() + 300)
        fwd = UnixSocketForwarder(work / "docker.sock", lambda: ssh.open_unix_channel(timeout=10.0), "bench")
        fwd.start()
        env = {**os.environ, "DOCKER_HOST": f"unix://{work / 'docker.sock'}"}
        env.pop("DOCKER_CONTEXT", None)
        deadline = time.monotonic() + 300
        while subprocess.run(["docker", "version"], env=env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the bench VM's engine never answered (see {work}/serial.log)")
            time.sleep(0.5)
        failed = [ln for ln in (work / "serial.log").read_text(errors="replace").splitlines()
                  if "cannot mount the share" in ln]
        if failed:
            raise RuntimeError(f"guest: {failed}")
        yield BenchVM(env, ssh, proc.pid, [r.proc.pid for r in started])
    finally:
        if fwd is not None:
            fwd.stop()
        if ssh is not None:
            ssh.close()
        if proc is not None:
            proc.kill()
            proc.wait()
        virtiofsd.stop(work, started, grace=1.0)
        shutil.rmtree(work, ignore_errors=True)


def rss_after_boot(accel: str, shares: list[tuple[GuestShare, str]], settle: float) -> dict[str, int]:
    with share_vm(accel, shares) as vm:
        time.sleep(settle)
        qemu = memory_of(vm.qemu_pid)
        daemons = sum(memory_of(p).get("Pss", 0) for d in vm.daemon_pids for p in tree(d))
    return {**qemu, "virtiofsd_pss": daemons}


def show_rss(label: str, m: dict[str, int]) -> str:
    mib = {k: v / 1024 for k, v in m.items()}
    return (f"  {label:<34} QEMU VmRSS {mib.get('VmRSS', 0):6.0f} MiB (anon {mib.get('RssAnon', 0):4.0f}, "
            f"shmem {mib.get('RssShmem', 0):4.0f}, file {mib.get('RssFile', 0):3.0f}; PSS {mib.get('Pss', 0):4.0f})"
            f"   virtiofsd PSS {mib.get('virtiofsd_pss', 0):5.1f} MiB")


def bench_mounts(args: argparse.Namespace, accel: str) -> None:
    variants = parse_variants(args.variants)
    bench_dir = Path.home() / f"pinnace-bench-{uuid.uuid4().hex[:6]}"
    bench_dir.mkdir()
    try:
        if not args.no_rss:
            print(f"\nmemory after boot ({args.settle:.0f} s after the engine answered; 2 GiB guest):")
            (bench_dir / "p").mkdir()
            (bench_dir / "v").mkdir()
            plain = rss_after_boot(accel, [(GuestShare("pinnace0", str(bench_dir / "p")), "")], args.settle)
            print(show_rss("9p only (private guest RAM)", plain))
            shared = rss_after_boot(accel, [(GuestShare("pinnace0", str(bench_dir / "p")), ""),
                                            (GuestShare("pinnace1", str(bench_dir / "v"), False, "virtiofs"),
                                             virtiofsd.CACHE)], args.settle)
            print(show_rss("9p + virtiofs (shared memfd RAM)", shared))
        shares = []
        for i, v in enumerate(variants):
            (bench_dir / v.dirname).mkdir()
            shares.append((GuestShare(f"{mounts.TAG_PREFIX}{i}", str(bench_dir / v.dirname), False, v.transport),
                           v.cache if v.transport == "virtiofs" else ""))
        tools = bench_dir / variants[0].dirname / "tools"
        tools.mkdir()
        binary = build_fsbench(tools)
        with share_vm(accel, shares) as vm:
            for (share, _), v in zip(shares, variants, strict=True):
                if v.transport == "9p" and v.cache != "mmap":
                    remount_9p(vm.ssh, share.tag, share.path, v.cache)
            image = busybox_image(sdk_client(vm.env))
            results: dict[str, list[dict[str, float]]] = {"host": [], "vm disk": []}
            results.update({v.label: [] for v in variants})
            print(f"\nmounts: {args.mb} MB sequential, {args.files} x 1 KB files, {args.rounds} interleaved rounds")
            results["vm disk"].append(container_fs(vm.env, image, tools, None, args.mb, args.files))
            for r in range(args.rounds):
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                results["host"].append(host_fs(binary, bench_dir / "host", args.mb, args.files))
                host = results["host"][-1]
                print(f"  round {r + 1}: {'host':<20} " + " ".join(f"{k} {host[k]:.0f}" for k in host), flush=True)
                for v in order:
                    vals = container_fs(vm.env, image, tools, bench_dir / v.dirname, args.mb, args.files)
                    results[v.label].append(vals)
                    print(f"  round {r + 1}: {v.label:<20} " + " ".join(f"{k} {vals[k]:.0f}" for k in vals),
                          flush=True)
            med = {name: {k: statistics.median(run[k] for run in runs) for k in runs[0]}
                   for name, runs in results.items() if runs}
            print(f"\n  medians ({args.rounds} rounds; the VM disk once)")
            print(f"  {'where':<24}  {'write':>13}  {'read':>13}  {'create':>10}  {'stat':>10}  {'read':>10}"
                  f"  {'delete':>10}  small-file ratio vs host")
            print("  " + row("host (same binary)", med["host"], med["host"], args.mb))
            print("  " + row("container, VM disk", med["vm disk"], med["host"], args.mb))
            for v in variants:
                print("  " + row(f"container, {v.label}", med[v.label], med["host"], args.mb))
    finally:
        shutil.rmtree(bench_dir, ignore_errors=True)


def sdk_client(env: dict[str, str]):  # noqa: ANN201 - docker.DockerClient
    import docker as sdk

    return sdk.DockerClient(base_url=env["DOCKER_HOST"], timeout=600)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="default")
    p.add_argument("--mb", type=int, default=256)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--no-floor", action="store_true", help="skip booting the floor VM")
    p.add_argument("--no-ports", action="store_true")
    p.add_argument("--no-mounts", action="store_true")
    p.add_argument("--no-rss", action="store_true", help="skip the two boots that measure memory")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settle", type=float, default=20.0, help="seconds after boot before reading RSS")
    p.add_argument("--variants", default=f"9p:mmap,virtiofs:{virtiofsd.CACHE}",
                   help="transport:cache, comma-separated (9p: mmap|none|loose; virtiofs: none|auto|always)")
    p.add_argument("--accel", default="", help="for the VMs this script boots (default: the instance's, or tcg)")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # the VMs' sshd is not up at once
    logging.getLogger("hypervisor.forward").setLevel(logging.CRITICAL)  # nor their engine

    paths = Paths.for_instance(args.name)
    accel = args.accel
    if not args.no_ports:
        env = {**os.environ, "DOCKER_HOST": f"unix://{paths.docker_socket}"}
        env.pop("DOCKER_CONTEXT", None)
        image = busybox_image(sdk_client(env))
        import json

        status = json.loads(subprocess.run([sys.executable, "-m", "app.cli", "--name", args.name, "status", "--json"],
                                           capture_output=True, text=True, cwd=ROOT, check=True).stdout)
        print(f"instance {args.name}: accel {status['accel']}, {status['cpus']} CPUs")
        accel = accel or status["accel"]
        port = free_port()
        name = f"bench-{uuid.uuid4().hex[:6]}"
        www = "/www"
        docker(env, "run", "-d", "--name", name, "-p", f"{port}:80", image, "sh", "-c",
               SERVE.format(www=www, mb=args.mb) + f" && exec httpd -f -p 80 -h {www}")
        try:
            ours = measure_port(port, args.mb, args.requests)
        finally:
            docker(env, "rm", "-f", name, check=False)
        print(f"\nports: {args.mb} MB download, {args.requests} requests (new connection each)")
        print(f"  published port (hostfwd_add) {ours['mb_s']:8.1f} MB/s   median {ours['median_ms']:.2f} ms"
              f"   p99 {ours['p99_ms']:.2f} ms")
        if not args.no_floor:
            with floor_vm(accel, args.mb) as fport:
                floor = measure_port(fport, args.mb, args.requests)
            print(f"  floor (hostfwd at launch)     {floor['mb_s']:8.1f} MB/s   median {floor['median_ms']:.2f} ms"
                  f"   p99 {floor['p99_ms']:.2f} ms")
            print(f"  ratio ours/floor: throughput x{ours['mb_s'] / floor['mb_s']:.2f}, "
                  f"median latency x{ours['median_ms'] / floor['median_ms']:.2f}")

    if not args.no_mounts:
        bench_mounts(args, accel or "tcg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
