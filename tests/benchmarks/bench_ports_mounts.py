"""Published ports and shared folders, measured on a running instance.

    PINNACE_HOME=... python tests/benchmarks/bench_ports_mounts.py --name default [--no-floor]
        [--mb 256] [--requests 500] [--files 5000] [--cache-modes mmap,none,loose]

Ports: a 256 MB HTTP download and 500 small requests (new connection each) through a published
port (`-p P:80`, forwarded by the agent with hostfwd_add), against the floor: a bare QEMU booted
by this script with the forward on its command line and busybox httpd in the guest itself.
Mounts: sequential write/read of a 256 MB file and 5,000 x 1 KB create/stat/read/delete, in a
container over the share (per 9p cache mode, remounted through SSH) vs the same static binary on the
host (and in the container's own overlay on the VM disk, for reference). Prints ratios.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hypervisor.keys import authorized_keys_line, ensure_instance_keys  # noqa: E402
from hypervisor.paths import Paths  # noqa: E402
from hypervisor.spec import MachineSpec, build_argv  # noqa: E402
from hypervisor.ssh import GuestSSH, SSHTarget  # noqa: E402
from tests.imagekit import busybox_image  # noqa: E402

MOUNT_OPTS = "trans=virtio,version=9p2000.L,msize=512000,access=client"


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
    from hypervisor.agent import locate_image

    work = Path(tempfile.mkdtemp(prefix="pinnace-floor-"))
    proc = None
    try:
        image_dir, image = locate_image("x86_64")
        keys = ensure_instance_keys(work / "keys", "floor")
        (work / "authorized_keys").write_text(authorized_keys_line(keys.client_public) + "\n")
        (work / "hostname").write_text("floor\n")
        (work / "shares").write_text("")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "data.qcow2"), "8G"], check=True)
        ssh_port, http_port = free_port(), free_port()
        spec = MachineSpec(
            name="floor", arch="x86_64", cpus=2, memory_mib=2048, kernel=image.path_of(image_dir, "kernel"),
            initrd=image.path_of(image_dir, "initrd"), rootfs=image.path_of(image_dir, "rootfs"),
            cmdline=image.cmdline, data_disk=work / "data.qcow2", ssh_host_port=ssh_port,
            fw_cfg=(("opt/pinnace/ssh_host_key", keys.host_key),
                    ("opt/pinnace/authorized_keys", work / "authorized_keys"),
                    ("opt/pinnace/hostname", work / "hostname"), ("opt/pinnace/shares", work / "shares")),
            serial_log=work / "serial.log", qmp_socket=work / "qmp.sock", pidfile=work / "qemu.pid",
            host_forwards=(f"tcp:127.0.0.1:{http_port}-:8000",))
        qemu = Path(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
        proc = subprocess.Popen(build_argv(qemu, spec, accel, "linux"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ssh = GuestSSH(SSHTarget("127.0.0.1", ssh_port, "root", keys.client_key, keys.host_public, "floor"))
        ssh.wait_until_reachable(time.monotonic() + 300)
        www = "/tmp/www"
        ssh.run(SERVE.format(www=www, mb=mb) + f" && (busybox httpd -p 8000 -h {www} &)", timeout=300)
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


def remount(ssh: GuestSSH, tag: str, path: str, cache: str) -> None:
    res = ssh.run(f"cd / && umount -l '{path}' && mount -t 9p -o {MOUNT_OPTS},cache={cache} {tag} '{path}'",
                  timeout=60)
    if res.exit_status != 0:
        raise RuntimeError(f"remount {path} cache={cache}: {bytes(res.stderr).decode(errors='replace')}")


def share_of(ssh: GuestSSH, directory: Path) -> tuple[str, str, str]:
    """(tag, mount point, cache option) of the 9p mount covering `directory` in the guest."""
    best = ("", "", "")
    for line in bytes(ssh.run("cat /proc/mounts").stdout).decode(errors="replace").splitlines():
        src, mnt, fstype, opts, *_ = line.split()
        mnt = mnt.replace("\\040", " ")
        if fstype == "9p" and (str(directory) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best[1]):
            cache = next((o.split("=", 1)[1] for o in opts.split(",") if o.startswith("cache=")), "none")
            best = (src, mnt, cache)
    if not best[0]:
        raise RuntimeError(f"{directory} is not under a 9p share in the guest")
    return best


def row(name: str, vals: dict[str, float], base: dict[str, float], mb: int) -> str:
    def rate(k: str) -> str:
        return f"{mb / (vals[k] / 1000):8.1f} MB/s" if vals[k] else "     inf"
    cells = [f"{name:<22}", rate("write"), rate("read")]
    cells += [f"{vals[k]:7.0f} ms" for k in ("create", "stat", "readsmall", "delete")]
    ratio = sum(vals[k] for k in ("create", "stat", "readsmall", "delete")) / max(
        1.0, sum(base[k] for k in ("create", "stat", "readsmall", "delete")))
    write, read = vals["write"] / max(base["write"], 1), vals["read"] / max(base["read"], 1)
    cells.append(f"x{ratio:6.1f}  (time: write x{write:.1f}, read x{read:.1f})")
    return "  ".join(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="default")
    p.add_argument("--mb", type=int, default=256)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--no-floor", action="store_true", help="skip booting the floor VM")
    p.add_argument("--no-ports", action="store_true")
    p.add_argument("--no-mounts", action="store_true")
    p.add_argument("--cache-modes", default="mmap,none,loose")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # the floor VM's sshd is not up at once

    paths = Paths.for_instance(args.name)
    env = {**os.environ, "DOCKER_HOST": f"unix://{paths.docker_socket}"}
    env.pop("DOCKER_CONTEXT", None)
    import docker as sdk

    image = busybox_image(sdk.DockerClient(base_url=env["DOCKER_HOST"], timeout=600))
    import json

    status = json.loads(subprocess.run([sys.executable, "-m", "app.cli", "--name", args.name, "status", "--json"],
                                       capture_output=True, text=True, cwd=ROOT, check=True).stdout)
    print(f"instance {args.name}: accel {status['accel']}, {status['cpus']} CPUs")

    if not args.no_ports:
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
            with floor_vm(status["accel"], args.mb) as fport:
                floor = measure_port(fport, args.mb, args.requests)
            print(f"  floor (hostfwd at launch)     {floor['mb_s']:8.1f} MB/s   median {floor['median_ms']:.2f} ms"
                  f"   p99 {floor['p99_ms']:.2f} ms")
            print(f"  ratio ours/floor: throughput x{ours['mb_s'] / floor['mb_s']:.2f}, "
                  f"median latency x{ours['median_ms'] / floor['median_ms']:.2f}")

    if not args.no_mounts:
        from hypervisor.keys import ensure_instance_keys as keys_of

        keys = keys_of(paths.keys_dir, paths.instance)
        ssh = GuestSSH(SSHTarget("127.0.0.1", int(paths.ssh_port_file.read_text()), "root", keys.client_key,
                                 keys.host_public, paths.instance))
        bench_dir = Path.home() / f"pinnace-bench-{uuid.uuid4().hex[:6]}"
        bench_dir.mkdir()
        try:
            tag, mnt, original = share_of(ssh, bench_dir)
            tools = bench_dir / "tools"
            tools.mkdir()
            binary = build_fsbench(tools)
            base = host_fs(binary, bench_dir / "host", args.mb, args.files)
            print(f"\nmounts: {args.mb} MB sequential, {args.files} x 1 KB files (share {mnt}, tag {tag})")
            print(f"  {'where':<22}  {'write':>13}  {'read':>13}  {'create':>10}  {'stat':>10}  {'read':>10}"
                  f"  {'delete':>10}  small-file ratio vs host")
            print("  " + row("host (same binary)", base, base, args.mb))
            local = container_fs(env, image, tools, None, args.mb, args.files)
            print("  " + row("container, VM disk", local, base, args.mb))
            for cache in [c for c in args.cache_modes.split(",") if c]:
                remount(ssh, tag, mnt, cache)
                vals = container_fs(env, image, tools, bench_dir, args.mb, args.files)
                print("  " + row(f"container, 9p {cache}", vals, base, args.mb))
            remount(ssh, tag, mnt, original)
        finally:
            shutil.rmtree(bench_dir, ignore_errors=True)
            ssh.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
