"""Faults that must never cost data, on throwaway instances: SIGTERM to the agent (a logout) powers
the guest off cleanly; a damaged data disk is repaired from its backup superblock or refused with
one line naming it, never formatted; a crashed QEMU is reported at once and booted again; a wiped
runtime dir or an orphaned QEMU never leads to a second QEMU on the disk; a full host disk pauses
the VM visibly and space resumes it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Instance, make_instance
from tests.waiting import wait_for

pytestmark = [pytest.mark.vm]

PRIMARY_SUPERBLOCK = 1024
BACKUP_BLOCKS_4K = (32768, 98304, 163840, 229376, 294912)  # what the guest tries, 4 KiB blocks


@pytest.fixture(scope="module")
def faults_vm(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Iterator[Instance]:
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io (qemu-utils) is needed to damage the disk")
    vm = make_instance(tmp_path_factory.mktemp("faults"), image_dir, name="faults")
    try:
        yield vm
    finally:
        vm.pinnace("stop", timeout=120)


def zero(disk: Path, offset: int, length: int) -> None:
    """Zeros where the guest sees them (through the qcow2 layer), as a damaged sector would read."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -z {offset} {length}", str(disk)], check=True,
                   capture_output=True)


def disk_in_use(disk: Path) -> str | None:
    from hypervisor.disk import in_use

    return in_use(Path(shutil.which("qemu-img") or "qemu-img"), disk)


def started(vm: Instance) -> None:
    done = vm.pinnace("start")
    assert done.returncode == 0, done.stdout + done.stderr


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


@pytest.mark.timeout(600)
def test_sigterm_to_the_agent_powers_the_guest_off_cleanly(faults_vm: Instance) -> None:
    vm = faults_vm
    started(vm)
    status = json.loads(vm.pinnace("status", "--json").stdout)
    os.kill(status["agent_pid"], signal.SIGTERM)
    wait_for("the agent and QEMU to exit", lambda: gone(status["agent_pid"]) and gone(status["qemu_pid"]), 60, 0.2)
    last = json.loads(vm.paths.state_file.read_text())
    assert last["state"] == "stopped", last
    assert "PINNACE-STAGE halted" in vm.paths.serial_log.read_text(errors="replace")  # a clean power-off
    # the next boot finds a clean filesystem (e2fsck -p had nothing to fix)
    started(vm)
    fsck = [ln for ln in vm.paths.serial_log.read_text(errors="replace").splitlines() if "pinnace: fsck" in ln]
    assert fsck and " rc=0 " in fsck[-1], fsck
    assert vm.pinnace("stop").returncode == 0


@pytest.mark.timeout(900)
def test_damaged_superblock_is_repaired_or_refused_never_formatted(faults_vm: Instance, tmp_path: Path) -> None:
    vm = faults_vm
    started(vm)
    image = vm.busybox_image()
    vm.docker("run", "--rm", "-v", "precious:/v", image, "sh", "-c", "echo keep > /v/f && sync")
    assert vm.pinnace("stop").returncode == 0

    # 1 KiB zeroed over the primary superblock: repaired from a backup, the volume intact
    zero(vm.paths.data_disk, PRIMARY_SUPERBLOCK, 1024)
    started(vm)
    assert vm.docker("run", "--rm", "-v", "precious:/v", image, "cat", "/v/f").stdout == "keep\n"
    assert "repaired from its backup superblock" in vm.paths.serial_log.read_text(errors="replace")
    assert vm.pinnace("stop").returncode == 0

    # the primary and every backup the guest tries: a clear refusal, and the disk untouched
    disk = vm.paths.data_disk
    zero(disk, PRIMARY_SUPERBLOCK, 1024)
    for block in BACKUP_BLOCKS_4K:
        zero(disk, block * 4096, 4096)
    before = tmp_path / "before.qcow2"
    shutil.copyfile(disk, before)
    failed = vm.pinnace("start")
    assert failed.returncode == 1
    assert "it was not formatted" in failed.stderr and str(disk) in failed.stderr, failed.stderr
    assert "pinnace reset" in failed.stderr
    # the failure is reported first; the failed boot's QEMU is ended right after
    wait_for("QEMU to let go of the disk", lambda: disk_in_use(disk) is None, 30)
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(before), str(disk)],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    status = vm.pinnace("status")
    assert "error" in status.stdout and "not formatted" in status.stdout, status.stdout
    # the way out the message names, which also leaves the module's instance usable for the rest
    reset = vm.pinnace("reset", "--yes")
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert vm.pinnace("stop").returncode == 0


@pytest.mark.timeout(300)
def test_no_container_reaches_the_guest_sshd(vm_instance: Instance, busybox: str) -> None:
    """Any image could otherwise attack sshd before authentication, or hold its slots so the agent
    cannot reconnect: on every guest address, not even the banner answers."""
    vm = vm_instance
    gateway = json.loads(vm.docker("network", "inspect", "bridge").stdout)[0]["IPAM"]["Config"][0]["Gateway"]
    for address in (gateway, "10.0.2.15", "10.0.2.16"):
        probe = vm.docker("run", "--rm", busybox, "sh", "-c", f"echo | nc -w 3 {address} 22; true", timeout=120)
        assert "SSH-" not in probe.stdout, (address, probe.stdout)
    # the host's own way in still works
    assert vm.pinnace("ssh", "--", "echo reachable").stdout.strip() == "reachable"
    # and the probe itself works: the same nc reaches a server in another container
    server = vm.docker("run", "-d", busybox, "sh", "-c", "mkdir -p /www && echo hi > /www/index.html && "
                       "exec httpd -f -p 8080 -h /www").stdout.strip()
    try:
        ip = json.loads(vm.docker("inspect", server).stdout)[0]["NetworkSettings"]["IPAddress"]
        answer = vm.docker("run", "--rm", busybox, "sh", "-c",
                           f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080; true", timeout=120)
        assert "HTTP/" in answer.stdout, answer.stdout
    finally:
        vm.docker("rm", "-f", server, check=False)


# --- a crash, a wiped runtime dir, an orphan ----------------------------------------------------


class StatusRecorder:
    """Every status the agent publishes, with the time it arrived (the control API's watch
    stream, read on a thread), so a test can tell how fast a change was reported."""

    def __init__(self, vm: Instance) -> None:
        from hypervisor import launcher

        self.seen: list[tuple[float, str, str]] = []
        self._client = launcher.client(vm.paths, timeout=600)
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        wait_for("the first status", lambda: self.seen, 10, 0.05)

    def _follow(self) -> None:
        with contextlib.suppress(Exception):
            for status in self._client.watch(timeout=600):
                self.seen.append((time.monotonic(), status.state, status.reason))

    def first(self, state: str, after: float) -> tuple[float, str] | None:
        return next(((t, reason) for t, s, reason in self.seen if s == state and t >= after), None)


def our_qemus(vm: Instance) -> list[int]:
    from hypervisor import process

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "qemu-system" in command and process.names_instance(command, vm.name):
                    found.append(int(entry.name))
    return found


def status_json(vm: Instance) -> dict:
    return json.loads(vm.pinnace("status", "--json").stdout)


def busy_session(vm: Instance, image: str) -> None:
    """What the agent served before the kill in the report: 200 concurrent clients, streaming clients
    killed mid-stream, a port published and removed."""
    def ping(_: int) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(str(vm.docker_socket))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            return s.recv(4096)

    with ThreadPoolExecutor(max_workers=200) as pool:
        answers = list(pool.map(ping, range(200)))
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    env = {**vm.env, "DOCKER_HOST": vm.docker_host}
    streams = [subprocess.Popen(["docker", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for args in (["events"], ["run", "--rm", image, "sh", "-c", "while true; do echo x; sleep 0.1; done"])]
    time.sleep(3)
    for proc in streams:
        proc.kill()
        proc.wait(30)
    published = vm.docker("run", "-d", "-p", "127.0.0.1::80", image, "sleep", "600").stdout.strip()
    vm.docker("rm", "-f", published)


@pytest.mark.timeout(900)
def test_a_crashed_qemu_is_reported_at_once_and_restarted(faults_vm: Instance) -> None:
    """kill -9 of QEMU after a long, busy session: `error` with the reason within 2 s, then the
    VM boots again by itself; a volume file written and synced before the kill is intact."""
    vm = faults_vm
    started(vm)
    image = vm.busybox_image()
    busy_session(vm, image)
    vm.docker("run", "--rm", "-v", "synced:/v", image, "sh", "-c", "echo before-the-crash > /v/f && sync")
    recorder = StatusRecorder(vm)
    qemu = status_json(vm)["qemu_pid"]
    killed = time.monotonic()
    os.kill(qemu, signal.SIGKILL)
    error = wait_for("the error state", lambda: recorder.first("error", killed), 10, 0.05)
    assert error[0] - killed < 2.0, f"error reported {error[0] - killed:.2f} s after the kill"
    assert "QEMU exited unexpectedly (killed by signal 9)" in error[1] and "restarting in" in error[1], error
    # after the error: a status the agent published as the kill landed (the ssh master's exit) still says running
    ready = wait_for("the automatic restart", lambda: recorder.first("running", error[0]), 300, 0.2)
    print(f"QEMU killed -> error {error[0] - killed:.2f} s, -> engine ready again {ready[0] - killed:.1f} s")
    now = status_json(vm)
    assert now["state"] == "running" and now["qemu_pid"] != qemu
    assert our_qemus(vm) == [now["qemu_pid"]]
    assert vm.docker("run", "--rm", "-v", "synced:/v", image, "cat", "/v/f").stdout == "before-the-crash\n"
    again = vm.pinnace("start")
    assert again.returncode == 0 and "already running" in again.stdout


@pytest.mark.timeout(900)
def test_a_wiped_runtime_dir_and_an_orphan_never_get_a_second_qemu(faults_vm: Instance) -> None:
    """A logout deletes the runtime dir under the running VM: the agent serves its sockets again
    and `status` still sees the same QEMU. An agent killed with its monitor socket gone leaves an
    orphan: `status` reports it, `reset` cannot delete the disk under it, `stop` ends it."""
    vm = faults_vm
    started(vm)
    image = vm.busybox_image()
    vm.docker("run", "--rm", "-v", "kept:/v", image, "sh", "-c", "echo kept > /v/f && sync")
    before = status_json(vm)
    shutil.rmtree(vm.paths.runtime_dir)
    wait_for("the engine socket back", lambda: vm.docker_socket.exists(), 10, 0.2)
    now = status_json(vm)
    assert now["state"] == "running", now
    assert (now["qemu_pid"], now["agent_pid"]) == (before["qemu_pid"], before["agent_pid"])
    assert vm.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    assert our_qemus(vm) == [before["qemu_pid"]]

    # the agent dies too, and the monitor socket with it: nothing can adopt that QEMU
    os.kill(before["agent_pid"], signal.SIGKILL)
    wait_for("the agent gone", lambda: gone(before["agent_pid"]), 10, 0.1)
    vm.paths.qmp_socket.unlink()
    orphan = vm.pinnace("status")
    assert orphan.returncode == 1
    assert "cannot be re-adopted" in orphan.stdout and "pinnace stop" in orphan.stdout, orphan.stdout
    assert our_qemus(vm) == [before["qemu_pid"]]
    assert disk_in_use(vm.paths.data_disk) is not None  # the orphan still holds the disk
    stopped = vm.pinnace("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_for("the orphan ended", lambda: gone(before["qemu_pid"]), 30, 0.2)
    assert our_qemus(vm) == []
    started(vm)
    assert vm.docker("run", "--rm", "-v", "kept:/v", image, "cat", "/v/f").stdout == "kept\n"
    assert vm.pinnace("stop").returncode == 0


@pytest.mark.timeout(600)
def test_six_concurrent_starts_boot_one_vm(faults_vm: Instance) -> None:
    """Six `pinnace start` at once (a tray and five terminals): all succeed, one QEMU."""
    vm = faults_vm
    if status_json(vm)["state"] != "stopped":
        assert vm.pinnace("stop").returncode == 0
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: vm.pinnace("start"), range(6)))
    assert [r.returncode for r in results] == [0] * 6, [r.stderr for r in results]
    assert len(our_qemus(vm)) == 1
    assert status_json(vm)["state"] == "running"
    assert vm.pinnace("stop").returncode == 0


# --- a full host disk -------------------------------------------------------------------------


@pytest.fixture
def tmpfs_home(tmp_path: Path) -> Iterator[Path]:
    """A small filesystem of its own for a throwaway instance, to fill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200m,mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path, leave_mib: int) -> Path:
    ballast = fs / "ballast"
    free = shutil.disk_usage(fs).free
    subprocess.run(["fallocate", "-l", str(free - leave_mib * 1024 * 1024), str(ballast)], check=True)
    return ballast


@pytest.mark.timeout(900)
def test_a_full_host_disk_pauses_the_vm_and_space_resumes_it(tmpfs_home: Path, image_dir: Path) -> None:
    vm = make_instance(tmpfs_home / "home", image_dir, name="full")
    try:
        started(vm)
        image = vm.busybox_image()
        recorder = StatusRecorder(vm)
        ballast = fill(tmpfs_home, 150)
        env = {**vm.env, "DOCKER_HOST": vm.docker_host}
        # urandom: zeros would become discards and never fill anything
        writer = subprocess.Popen(["docker", "run", "--name", "writer", "-v", "big:/v", image, "sh", "-c",
                                   "dd if=/dev/urandom of=/v/big bs=1M count=400 && sync"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        began = time.monotonic()
        paused = wait_for("the pause", lambda: recorder.first("paused", began), 300, 0.2)
        assert f"the disk holding {vm.paths.data_disk} is full" in paused[1], paused
        shown = vm.pinnace("status")
        assert shown.returncode == 1 and "paused" in shown.stdout and "is full" in shown.stdout, shown.stdout

        # new docker connections fail at once, with the reason
        asked = time.monotonic()
        version = vm.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=30)
        assert time.monotonic() - asked < 5.0
        assert version.returncode != 0 and "is full" in version.stderr, version.stderr
        # the client that was writing is not left hanging (and can be interrupted)
        writer.send_signal(signal.SIGINT)
        writer.wait(30)

        # room again: the VM resumes by itself and the engine answers
        ballast.unlink()
        freed = time.monotonic()
        resumed = wait_for("the resume", lambda: recorder.first("running", freed), 60, 0.1)
        wait_for("the engine", lambda: vm.docker("version", check=False).returncode == 0, 30, 0.2)
        print(f"space freed -> running {resumed[0] - freed:.2f} s, engine answering {time.monotonic() - freed:.2f} s")
        vm.docker("wait", "writer", timeout=300)

        # full again, then stopped while paused: clean the first time
        fill(tmpfs_home, 100)
        vm.docker("run", "-d", "-v", "big:/v", image, "sh", "-c", "dd if=/dev/urandom of=/v/more bs=1M count=300")
        again = time.monotonic()
        wait_for("the second pause", lambda: recorder.first("paused", again), 300, 0.2)
        stopped = vm.pinnace("stop", timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert our_qemus(vm) == []
        assert status_json(vm)["state"] == "stopped"
    finally:
        vm.pinnace("stop", timeout=120)
        for pid in our_qemus(vm):
            os.kill(pid, signal.SIGKILL)
