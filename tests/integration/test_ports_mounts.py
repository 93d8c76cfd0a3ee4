"""Published ports and shared host folders, through the real CLI, agent, QEMU and engine.

Ports: HTTP on -p P:80, -p 127.0.0.1:P:80 and -p 80 (engine-assigned), UDP echo, stop -> closed,
agent killed -> re-adopted forwards, a host port already taken -> reported in `status --json`.
Mounts: host -> container and back (ownership and mode), a path with spaces, a comma and
non-ASCII, the hint for a bind outside every share, and a read-only share; on the shared instance
(share_transport auto) and on one fresh instance per transport (9p, virtiofs), each sharing a
read-write and a read-only folder, whose container sees the transport it asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hypervisor import mounts, virtiofsd
from tests.conftest import Instance, make_instance
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]

HOME = Path.home()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as reply:  # noqa: S310
        return reply.read().decode()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def status_of(instance) -> dict:  # noqa: ANN001
    result = instance.pinnace("status", "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def forwards(instance) -> list[dict]:  # noqa: ANN001
    return status_of(instance)["port_forwards"]


HTTPD = "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory under the default share ($HOME)."""
    path = HOME / f"pinnace-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(600)
def test_tcp_ports_all_forms_and_stop_closes(vm_instance, busybox: str) -> None:  # noqa: ANN001
    vm = vm_instance
    p_default, p_loop = free_port(), free_port()
    name = f"web-{uuid.uuid4().hex[:6]}"
    vm.docker("run", "-d", "--name", name, "--hostname", "web", "-p", f"{p_default}:80",
              "-p", f"127.0.0.1:{p_loop}:80", "-p", "80", busybox, "sh", "-c", HTTPD)
    try:
        assigned = vm.docker("port", name, "80/tcp").stdout.split()
        random_ports = {int(line.rsplit(":", 1)[1]) for line in assigned} - {p_default, p_loop}
        assert len(random_ports) == 1, assigned
        p_random = random_ports.pop()
        for port in (p_default, p_loop, p_random):
            assert wait_for(f"HTTP on {port}", lambda p=port: http_get(p) == "hello-web\n", 60)
        entries = {e["host_port"]: e for e in forwards(vm)}
        assert {p_default, p_loop, p_random} <= set(entries)
        assert all(entries[p]["host_ip"] == "127.0.0.1" and entries[p]["error"] == "" for p in entries)
        assert entries[p_default]["container_name"] == name and entries[p_default]["container_port"] == 80
    finally:
        vm.docker("stop", "-t", "1", name, check=False)
    for port in (p_default, p_loop, p_random):
        wait_for(f"port {port} closed after stop", lambda p=port: refused(p), 30)
    assert not [e for e in forwards(vm) if e["container_name"] == name]
    vm.docker("rm", name, check=False)


UDP_ECHO_C = r"""
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[1]));
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) return 1;
    char buf[65536];
    for (;;) {
        struct sockaddr_in from; socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, len);
    }
}
"""


def build_udp_echo(host_dir: Path) -> Path:
    """A tiny static UDP echo server (busybox's nc has no -u), for containers to run from `host_dir`."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the UDP echo server")
    source = host_dir / "udpecho.c"
    source.write_text(UDP_ECHO_C)
    subprocess.run(["gcc", "-static", "-Os", "-o", str(host_dir / "udpecho"), str(source)], check=True)
    return host_dir / "udpecho"


def udp_echo(port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(payload, ("127.0.0.1", port))
        return s.recvfrom(65536)[0]


@pytest.mark.timeout(600)
def test_udp_port(vm_instance, busybox: str, host_dir: Path) -> None:  # noqa: ANN001
    # busybox's static nc has no -u: a tiny static UDP echo server, shared through the bind mount.
    build_udp_echo(host_dir)
    vm = vm_instance
    port = free_port(socket.SOCK_DGRAM)
    name = f"udp-{uuid.uuid4().hex[:6]}"
    vm.docker("run", "-d", "--name", name, "-p", f"{port}:9000/udp", "-v", f"{host_dir}:/x:ro", busybox,
              "/x/udpecho", "9000")
    try:
        assert wait_for("UDP echo", lambda: udp_echo(port, b"ping") == b"ping", 60)
        entry = next(e for e in forwards(vm) if e["host_port"] == port)
        assert entry["proto"] == "udp" and entry["error"] == ""
    finally:
        vm.docker("rm", "-f", name, check=False)
    wait_for("udp forward removed", lambda: not [e for e in forwards(vm) if e["host_port"] == port], 30)


@pytest.mark.timeout(600)
def test_port_taken_on_host_is_reported(vm_instance, busybox: str) -> None:  # noqa: ANN001
    vm = vm_instance
    name = f"busy-{uuid.uuid4().hex[:6]}"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        vm.docker("run", "-d", "--name", name, "-p", f"{port}:80", busybox, "sh", "-c", HTTPD)
        try:
            def reported() -> dict | None:
                return next((e for e in forwards(vm) if e["host_port"] == port and e["error"]), None)

            entry = wait_for("the conflict in status", reported, 60)
            assert name in entry["error"] and f"127.0.0.1:{port}/tcp" in entry["error"]
            assert "already in use" in entry["error"]
            log = vm.paths.log_dir / "agent.log"
            assert f"127.0.0.1:{port}/tcp for container {name}" in log.read_text()
        finally:
            holder.close()
    try:
        # Once the host port is free again the agent retries (within its retry period) and succeeds.
        wait_for("the forward after the port was freed", lambda: http_get(port).startswith("hello-"), 60, 1.0)
    finally:
        vm.docker("rm", "-f", name, check=False)


@pytest.mark.timeout(900)
def test_agent_restart_readopts_forwards(vm_instance, busybox: str) -> None:  # noqa: ANN001
    vm = vm_instance
    keep, gone = free_port(), free_port()
    a, b = f"keep-{uuid.uuid4().hex[:6]}", f"gone-{uuid.uuid4().hex[:6]}"
    vm.docker("run", "-d", "--name", a, "-p", f"{keep}:80", busybox, "sh", "-c", HTTPD)
    vm.docker("run", "-d", "--name", b, "-p", f"{gone}:80", busybox, "sh", "-c", HTTPD)
    try:
        for port in (keep, gone):
            wait_for(f"HTTP on {port}", lambda p=port: http_get(p).startswith("hello-"), 60)
        agent_pid = status_of(vm)["agent_pid"]
        os.kill(agent_pid, signal.SIGKILL)
        wait_for("the agent gone", lambda: not os.path.exists(f"/proc/{agent_pid}"), 10)
        # QEMU keeps forwarding without the agent.
        assert http_get(keep).startswith("hello-")
        st = status_of(vm)  # re-adopts
        assert st["state"] == "running" and st["agent_pid"] != agent_pid
        entries = wait_for("the forwards re-adopted",
                           lambda: {e["host_port"]: e for e in forwards(vm) if e["host_port"] in (keep, gone)}
                           if len([e for e in forwards(vm) if e["host_port"] in (keep, gone)]) == 2 else None, 60)
        assert all(e["error"] == "" for e in entries.values()), entries
        vm.docker("rm", "-f", b)
        wait_for(f"port {gone} closed", lambda: refused(gone), 30)
        assert http_get(keep).startswith("hello-")
    finally:
        vm.docker("rm", "-f", a, b, check=False)


# --- bind mounts ------------------------------------------------------------------------------

def fstype_of(vm: Instance, image: str, source: Path, target: str = "/src") -> str:
    """The filesystem a container sees at a bind of `source`: the share's transport."""
    line = vm.docker("run", "--rm", "-v", f"{source}:{target}", image, "sh", "-c",
                     f"grep ' {target} ' /proc/self/mounts").stdout.split()
    return line[2]


def expected_auto() -> str:
    """What share_transport = auto must pick on this (Linux) host."""
    daemon, _why = virtiofsd.locate()
    return mounts.AUTO_LINUX if daemon is not None else "9p"


class ContainerShell:
    """One `sh` in a running container, fed commands on stdin: a read right after a host write,
    with no `docker exec` start-up in between (that would hide a short-lived stale cache)."""

    MARK = "@@pinnace-done@@"

    def __init__(self, vm: Instance, container: str) -> None:
        env = {**vm.env, "DOCKER_HOST": vm.docker_host}
        env.pop("DOCKER_CONTEXT", None)
        self.proc = subprocess.Popen(["docker", "exec", "-i", container, "sh"], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def run(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{command}; echo; echo {self.MARK}\n")
        self.proc.stdin.flush()
        lines = []
        for line in self.proc.stdout:
            if line.rstrip("\n") == self.MARK:
                return "".join(lines)[:-1]  # the echo's newline
            lines.append(line)
        raise AssertionError(f"the container's shell ended: {''.join(lines)!r}")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


APPEND_ROUNDS = 200


def check_never_stale(vm: Instance, container: str, host_dir: Path, mount: str = "/src") -> None:
    """A file the host grows, rewrites shorter and replaces, read by the container right after
    each write, APPEND_ROUNDS times: never a stale or cut-off read; a deletion seen at once."""
    shell = ContainerShell(vm, container)
    try:
        path = host_dir / "grow.txt"
        expected = ""
        path.write_text(expected)
        for i in range(APPEND_ROUNDS):
            if i % 20 == 19:  # shorter than before: a stale size would show old bytes
                expected = f"rewritten {i}\n"
                path.write_text(expected)
            else:
                expected += f"line {i}\n"
                with path.open("a") as f:
                    f.write(f"line {i}\n")
            got = shell.run(f"cat {mount}/grow.txt")
            assert got == expected, f"round {i}: read {len(got)} bytes, the host wrote {len(expected)}"
        path.unlink()
        assert shell.run(f"test -e {mount}/grow.txt && echo stale || echo gone") == "gone\n"
        path.write_text("back\n")
        assert shell.run(f"cat {mount}/grow.txt") == "back\n"
    finally:
        shell.close()


def check_both_ways(vm: Instance, image: str, share_root: Path) -> None:
    """Host -> container and back through a bind under `share_root`, at an awkward path."""
    odd = share_root / "dir with spaces, comma é漢"
    odd.mkdir()
    (odd / "from-host.txt").write_text("written on the host\n")
    script = ("cat /src/from-host.txt && echo written-in-container > /src/from-ct.txt && "
              "mkdir /src/sub && chmod 640 /src/from-ct.txt && stat -c '%a %u' /src/from-host.txt")
    out = vm.docker("run", "--rm", "-v", f"{odd}:/src", image, "sh", "-c", script).stdout
    lines = out.splitlines()
    assert lines[0] == "written on the host"
    assert lines[1] == f"{(odd / 'from-host.txt').stat().st_mode & 0o777:o} {os.getuid()}"
    made = odd / "from-ct.txt"
    assert made.read_text() == "written-in-container\n"
    assert made.stat().st_uid == os.getuid() and made.stat().st_mode & 0o777 == 0o640
    assert (odd / "sub").is_dir() and (odd / "sub").stat().st_uid == os.getuid()
    # A change on the host is visible at once in a new container (no stale metadata cache).
    made.write_text("changed on the host\n")
    out = vm.docker("run", "--rm", "-v", f"{odd}:/src", image, "cat", "/src/from-ct.txt").stdout
    assert out == "changed on the host\n"
    # ... and within one running container: a file the host creates, grows, then deletes.
    name = f"watch-{uuid.uuid4().hex[:6]}"
    vm.docker("run", "-d", "--name", name, "-v", f"{odd}:/src", image, "sleep", "600")
    try:
        late = odd / "late.txt"
        late.write_text("late\n")
        assert vm.docker("exec", name, "cat", "/src/late.txt").stdout == "late\n"
        with late.open("a") as f:
            f.write("more\n")
        # file data is re-read at every open, whatever the transport caches
        assert vm.docker("exec", name, "cat", "/src/late.txt").stdout == "late\nmore\n"
        late.unlink()
        assert vm.docker("exec", name, "ls", "/src/late.txt", check=False).returncode != 0
        check_never_stale(vm, name, odd)
    finally:
        vm.docker("rm", "-f", name, check=False)


@pytest.mark.timeout(600)
def test_bind_mount_both_ways_with_odd_path(vm_instance, busybox: str, host_dir: Path) -> None:  # noqa: ANN001
    # The shared instance runs with the default settings: $HOME over share_transport = auto.
    transport = expected_auto()
    assert fstype_of(vm_instance, busybox, host_dir) == transport
    status = json.loads(vm_instance.pinnace("status", "--json").stdout)
    assert {"path": str(HOME), "read_only": False, "transport": transport} in status["shares"], status["shares"]
    assert status["share_transport_reason"].startswith("auto:")
    check_both_ways(vm_instance, busybox, host_dir)


EVENT_LATENCY_S = 10.0  # host change -> event in the container, under TCG on a loaded 2-core host

# An inotify watcher as hot-reload tools use one (busybox-static has no inotifyd): one line per event.
WATCH_C = r"""
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[65536];
    int fd = inotify_init1(0);
    if (fd < 0 || inotify_add_watch(fd, argv[1], IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_ATTRIB) < 0) {
        perror("inotify");
        return 1;
    }
    printf("watching %s\n", argv[1]);
    fflush(stdout);
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) return 2;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            const char *what = e->mask & IN_MODIFY ? "modify" : e->mask & IN_CLOSE_WRITE ? "close_write"
                : e->mask & IN_CREATE ? "create" : e->mask & IN_DELETE ? "delete"
                : e->mask & IN_ATTRIB ? "attrib" : "other";
            printf("%s%s %s\n", what, e->mask & IN_ISDIR ? ",dir" : "", e->len ? e->name : ".");
            fflush(stdout);
            p += sizeof *e + e->len;
        }
    }
}
"""


def inotify_watcher(work: Path) -> Path:
    """The watcher, built static on the host into `work` (a shared folder, so containers run it)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the inotify watcher")
    (work / "watch.c").write_text(WATCH_C)
    subprocess.run(["gcc", "-static", "-Os", "-o", str(work / "watch"), str(work / "watch.c")], check=True)
    return work / "watch"


def check_file_events(vm: Instance, image: str, share_dir: Path) -> dict[str, float]:
    """An inotify watcher in a container, on a bind of a tree under `share_dir`, sees what the host
    does in it: modify + close-write of a changed file, attrib, create, delete, a new subdirectory.
    Returns the seconds each took (host change -> the line in `docker logs`)."""
    tools = share_dir / "tools"
    tools.mkdir()
    inotify_watcher(tools)
    tree = share_dir / "src"
    tree.mkdir()
    (tree / "existing.txt").write_text("v1\n")
    name = f"inotify-{uuid.uuid4().hex[:6]}"
    vm.docker("run", "-d", "--name", name, "-v", f"{share_dir}:/w", image, "/w/tools/watch", "/w/src")
    try:
        agent_log = vm.paths.log_dir / "agent.log"
        wait_for("the agent to watch the bind-mounted tree",
                 lambda: f"file events: watching {share_dir} " in agent_log.read_text(), 60)
        wait_for("the watcher in the container", lambda: "watching /w/src" in vm.docker("logs", name).stdout, 60)
        seen: dict[str, float] = {}

        def expect(what: str, lines: list[str], change: Callable[[], None]) -> None:
            started = time.monotonic()
            change()
            wait_for(what, lambda: all(ln in vm.docker("logs", name).stdout.splitlines() for ln in lines),
                     EVENT_LATENCY_S, every=0.1)
            seen[what] = time.monotonic() - started

        def append() -> None:
            with (tree / "existing.txt").open("a") as f:
                f.write("v2\n")

        expect("modify", ["modify existing.txt", "close_write existing.txt"], append)
        expect("attrib", ["attrib existing.txt"], lambda: (tree / "existing.txt").chmod(0o600))
        expect("create", ["create new.txt"], lambda: (tree / "new.txt").write_text("new\n"))
        expect("delete", ["delete new.txt"], (tree / "new.txt").unlink)
        expect("mkdir", ["create,dir subdir"], (tree / "subdir").mkdir)
        # the content is whole, too (coherence and events together)
        assert vm.docker("exec", name, "cat", "/w/src/existing.txt").stdout == "v1\nv2\n"
        return seen
    finally:
        vm.docker("rm", "-f", name, check=False)


@pytest.mark.timeout(600)
def test_host_changes_reach_inotify_in_a_container(vm_instance, busybox: str, host_dir: Path) -> None:  # noqa: ANN001
    """The moonshot of shared folders: hot-reload watchers in containers hear of host edits."""
    latencies = check_file_events(vm_instance, busybox, host_dir)
    print("file event latency (s):", {k: round(v, 2) for k, v in latencies.items()})
    # the watch ends with the last container that bind-mounts the tree
    wait_for("the watch to end", lambda: f"file events: no longer watching {host_dir}" in
             (vm_instance.paths.log_dir / "agent.log").read_text(), 60)


@pytest.mark.timeout(300)
def test_bind_outside_shares_logs_a_hint(vm_instance, busybox: str) -> None:  # noqa: ANN001
    vm = vm_instance
    outside = f"/opt/pinnace-not-shared-{uuid.uuid4().hex[:6]}"
    out = vm.docker("run", "--rm", "-v", f"{outside}:/x", busybox, "sh", "-c", "ls -A /x | wc -l").stdout
    assert out.strip() == "0"  # the engine made an empty directory in the VM
    log = vm.paths.log_dir / "agent.log"
    wait_for("the hint in agent.log", lambda: f"bind-mounts {outside}, outside every shared folder" in
             log.read_text(), 30)


@pytest.fixture(scope="module", params=mounts.TRANSPORTS)
def share_vm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             image_dir: Path) -> Iterator[tuple[Instance, str, Path, Path]]:
    """A fresh instance per transport sharing only a read-write and a read-only folder under $HOME."""
    transport = request.param
    if transport == "virtiofs" and virtiofsd.locate()[0] is None:
        pytest.skip(f"virtiofs: {virtiofsd.locate()[1]}")
    rw = HOME / f"pinnace-test-rw-{transport}-{uuid.uuid4().hex[:6]}"
    ro = HOME / f"pinnace-test-ro-{transport}-{uuid.uuid4().hex[:6]}"
    rw.mkdir()
    ro.mkdir()
    vm = make_instance(tmp_path_factory.mktemp(f"shares-{transport}"), image_dir, name="shares")
    try:
        for key, value in (("share_transport", transport), ("shares", f"{rw},{ro}:ro")):
            done = vm.pinnace("config", "set", key, value)
            assert done.returncode == 0, done.stderr
        started = vm.pinnace("start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield vm, transport, rw, ro
    finally:
        vm.pinnace("stop", timeout=120)
        shutil.rmtree(rw, ignore_errors=True)
        shutil.rmtree(ro, ignore_errors=True)


@pytest.mark.timeout(900)
def test_share_transport_both_ways(share_vm) -> None:  # noqa: ANN001

    vm, transport, rw, ro = share_vm
    image = vm.busybox_image()
    assert fstype_of(vm, image, rw) == transport
    assert fstype_of(vm, image, ro) == transport
    check_both_ways(vm, image, rw)


@pytest.mark.timeout(600)
def test_share_transport_file_events(share_vm) -> None:  # noqa: ANN001

    vm, _transport, rw, _ro = share_vm
    tree = rw / f"events-{uuid.uuid4().hex[:6]}"
    tree.mkdir()
    check_file_events(vm, vm.busybox_image(), tree)


MMAP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, 4096)) { perror("open"); return 1; }
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap MAP_SHARED"); return 2; }
    strcpy(p, "through a shared mapping");
    if (msync(p, 4096, MS_SYNC)) { perror("msync"); return 3; }
    return munmap(p, 4096) || close(fd);
}
"""


@pytest.mark.timeout(600)
def test_share_transport_shared_writable_mmap(share_vm) -> None:  # noqa: ANN001
    """What sqlite's WAL, LMDB and friends need; virtiofs' cache=none would refuse it (ENODEV)."""

    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the mmap probe")
    vm, _transport, rw, _ro = share_vm
    image = vm.busybox_image()
    work = rw / f"mmap-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    (work / "mm.c").write_text(MMAP_C)
    subprocess.run(["gcc", "-static", "-Os", "-o", str(work / "mm"), str(work / "mm.c")], check=True)
    done = vm.docker("run", "--rm", "-v", f"{work}:/w", image, "/w/mm", "/w/db", check=False)
    assert done.returncode == 0, done.stderr
    assert (work / "db").read_bytes().startswith(b"through a shared mapping\0")
    assert (work / "db").stat().st_uid == os.getuid()


SQLITE_WAL_C = r"""
#include <sqlite3.h>
#include <stdio.h>
static int check(sqlite3 *db, int rc, const char *what) {
    if (rc != SQLITE_OK) { fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db)); return 1; }
    return 0;
}
int main(int argc, char **argv) {
    sqlite3 *db;
    char sql[128];
    if (sqlite3_open(argv[1], &db) != SQLITE_OK) { fprintf(stderr, "open failed\n"); return 1; }
    if (check(db, sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER, s TEXT);", 0, 0, 0),
              "create")) return 2;
    for (int i = 0; i < 50; i++) {  /* one transaction each: 50 commits through the WAL and its -shm */
        snprintf(sql, sizeof sql, "INSERT INTO t VALUES (%d, 'row %d');", i, i);
        if (check(db, sqlite3_exec(db, sql, 0, 0, 0), "insert")) return 3;
    }
    return sqlite3_close(db) != SQLITE_OK;
}
"""
SQLITE_STATIC = Path("/usr/lib/x86_64-linux-gnu/libsqlite3.a")


@pytest.mark.timeout(600)
def test_share_transport_sqlite_wal_written_in_a_container_reads_on_the_host(share_vm) -> None:  # noqa: ANN001
    """SQLite in WAL mode maps its -shm file MAP_SHARED: a database a container writes on a share
    must be whole and in WAL mode when the host opens it."""
    import sqlite3


    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the sqlite probe")
    assert SQLITE_STATIC.exists(), "libsqlite3-dev (scripts/install.sh installs it)"
    vm, _transport, rw, _ro = share_vm
    image = vm.busybox_image()
    work = rw / f"sqlite-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    (work / "wal.c").write_text(SQLITE_WAL_C)
    subprocess.run(["gcc", "-static", "-Os", "-o", str(work / "wal"), str(work / "wal.c"), "-lsqlite3", "-lm"],
                   check=True, capture_output=True)
    done = vm.docker("run", "--rm", "-v", f"{work}:/w", image, "/w/wal", "/w/app.db", check=False)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(work / "app.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT count(*), sum(n) FROM t").fetchone() == (50, sum(range(50)))
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.timeout(600)
def test_share_transport_read_only_refuses_writes(share_vm) -> None:  # noqa: ANN001

    vm, transport, _rw, ro = share_vm
    image = vm.busybox_image()
    (ro / "data.txt").write_text("read me\n")
    out = vm.docker("run", "--rm", "-v", f"{ro}:/ro", image, "cat", "/ro/data.txt").stdout
    assert out == "read me\n"
    write = vm.docker("run", "--rm", "-v", f"{ro}:/ro", image, "sh", "-c", "echo x > /ro/new.txt", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr + write.stdout
    # The host enforces it too: a privileged container that remounts its bind read-write still
    # cannot write (9p: QEMU's readonly=on; virtiofs: virtiofsd's --readonly or a read-only bind).
    daemon = virtiofsd.locate()[0]
    if transport == "virtiofs" and os.geteuid() != 0 and not (daemon and daemon.readonly):
        pytest.skip("this virtiofsd, run as a user, has no --readonly: only the guest enforces read-only")
    sneaky = vm.docker("run", "--rm", "--privileged", "-v", f"{ro}:/ro", image, "sh", "-c",
                       "mount -o remount,rw /ro; echo x > /ro/sneaky.txt", check=False)
    assert sneaky.returncode != 0 and "Read-only file system" in sneaky.stderr + sneaky.stdout
    assert not (ro / "new.txt").exists() and not (ro / "sneaky.txt").exists()
    assert sorted(p.name for p in ro.iterdir()) == ["data.txt"]


@pytest.mark.timeout(600)
def test_share_transport_unshared_home_is_the_vms_own(share_vm) -> None:  # noqa: ANN001

    vm, _transport, rw, _ro = share_vm
    image = vm.busybox_image()
    # $HOME is not shared: a bind of it is the VM's own directory, without the host's files.
    marker = HOME / f"{rw.name}-marker"
    marker.write_text("host only\n")
    try:
        listing = vm.docker("run", "--rm", "-v", f"{HOME}:/h", image, "ls", "-A", "/h").stdout.split()
        assert marker.name not in listing
    finally:
        marker.unlink()


@pytest.mark.timeout(600)
def test_share_transport_stop_leaves_nothing_behind(share_vm) -> None:  # noqa: ANN001
    """Runs last for its instance: the virtiofsds (one per share) live exactly as long as the VM."""
    vm, transport, rw, ro = share_vm
    run = vm.paths.runtime_dir
    pidfiles = sorted(run.glob("virtiofsd-*.pid"))
    sockets = sorted(vm.paths.socket_dir.glob("vfs*.sock"))
    if transport == "9p":
        assert pidfiles == [] and sockets == []
    else:
        assert [p.name for p in pidfiles] == ["virtiofsd-pinnace0.pid", "virtiofsd-pinnace1.pid"]
        assert [s.name for s in sockets] == ["vfs0.sock", "vfs1.sock"]
        assert all(s.stat().st_mode & 0o777 == 0o600 for s in sockets)
        assert vm.paths.socket_dir.stat().st_mode & 0o777 == 0o700
        entries = [virtiofsd.read_pidfile(p) for p in pidfiles]
        assert all(e is not None and virtiofsd.is_ours(*e) for e in entries)
        logs = sorted(p.name for p in vm.paths.log_dir.glob("virtiofsd-*.log"))
        assert logs == ["virtiofsd-pinnace0.log", "virtiofsd-pinnace1.log"]
    stopped = vm.pinnace("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    if transport == "virtiofs":
        wait_for("the virtiofsds gone", lambda: not any(os.path.exists(f"/proc/{e[0]}") for e in entries), 15)
    assert list(run.glob("virtiofsd-*.pid")) == [] and list(vm.paths.socket_dir.glob("vfs*.sock")) == []
