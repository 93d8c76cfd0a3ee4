"""The engine socket must make every Docker tool work unchanged.

Runs the real docker CLI (and the docker SDK, and raw HTTP) against the shared booted instance's
engine socket: builds with big contexts, hijacked attach/exec streams with half-close, streaming
logs and events, 100 MB+ save/load and cp round trips, 100 concurrent clients, a client killed
mid-upload, a guest sshd restart, the socket/key permissions and a wrong pinned host key.

Every test uses its own uniquely named containers and images and removes them afterwards.
Nothing here needs a registry: images are imported from the busybox rootfs or built FROM scratch.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from hypervisor.agent.socket_carrier import MASTER_LISTENER
from hypervisor.endpoint_switch import OWN_NAME
from tests.imagekit import busybox_binary, rootfs_tar
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")

MIB = 1 << 20


# --- helpers --------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"pinnace-{prefix}-{uuid.uuid4().hex[:10]}"


def docker_env(vm, buildkit: bool = False) -> dict[str, str]:  # noqa: ANN001 - conftest.Instance
    env = {**vm.env, "DOCKER_HOST": vm.docker_host, "DOCKER_BUILDKIT": "1" if buildkit else "0"}
    env.pop("DOCKER_CONTEXT", None)
    return env


class Resources:
    """Names handed out to one test; whatever was created under them is removed afterwards."""

    def __init__(self, vm) -> None:  # noqa: ANN001 - conftest.Instance
        self.vm = vm
        self.containers: list[str] = []
        self.images: list[str] = []

    def container(self, prefix: str = "c") -> str:
        name = unique(prefix)
        self.containers.append(name)
        return name

    def image(self, prefix: str = "img") -> str:
        tag = f"{unique(prefix)}:test"
        self.images.append(tag)
        return tag

    def cleanup(self) -> None:
        if self.containers:
            self.vm.docker("rm", "-f", "-v", *self.containers, check=False, timeout=120)
        if self.images:
            self.vm.docker("rmi", "-f", *self.images, check=False, timeout=120)


@pytest.fixture
def res(vm_instance):
    resources = Resources(vm_instance)
    yield resources
    resources.cleanup()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def make_busybox_context(directory: Path, dockerfile: str, files: dict[str, bytes] | None = None) -> Path:
    """A classic-builder context FROM scratch: /bin/busybox (+ applets via RUN) and `files`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "busybox").write_bytes(busybox_binary())
    (directory / "busybox").chmod(0o755)
    for name, content in (files or {}).items():
        (directory / name).write_bytes(content)
    (directory / "Dockerfile").write_text(dockerfile)
    return directory


BUSYBOX_PREAMBLE = (
    "FROM scratch\n"
    "COPY busybox /bin/busybox\n"
    'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    "ENV PATH=/bin\n"
)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("docker", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def api_get(path: str, url: str, timeout: float = 60.0) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def accepted_sockets(socket_path: Path) -> set[str]:
    """Inodes of the accepted (server-side) connections on the listeners behind `socket_path`.

    In /proc/net/unix a listener's accepted sockets carry the path it was bound at; state 03 is
    SS_CONNECTED (the listener itself is 01). The engine socket's name leads to the agent's
    listener or to the ssh master's, bound as engine.ssh beside it: this takes both, so it is
    exactly the open client sockets, plus connections still waiting in an accept backlog.
    """
    wanted = {str(socket_path), str(socket_path.with_name(MASTER_LISTENER))}
    found: set[str] = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split(None, 7)
            if len(parts) == 8 and parts[7].rstrip("\n") in wanted and parts[5] == "03":
                found.add(parts[6])
    return found


def connected_clients(socket_path: Path) -> int:
    return len(accepted_sockets(socket_path))


def ssh_port(vm) -> int:  # noqa: ANN001 - conftest.Instance
    result = vm.pinnace("status", "--json", timeout=60)
    port = json.loads(result.stdout).get("ssh_port")
    assert port, f"no ssh_port in status: {result.stdout}"
    return int(port)


def guest_sh(vm, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    """Run `script` in the guest (busybox sh; the applets live in /usr/local/bin)."""
    return vm.pinnace("ssh", "--", script, timeout=timeout)


# --- basics ---------------------------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.timeout(120)
def test_docker_version_shows_server_26(vm_instance):
    out = vm_instance.docker("version", "--format", "{{json .}}").stdout
    info = json.loads(out)
    assert info["Client"]["Version"], out
    assert info["Server"]["Version"].startswith("26."), info["Server"]
    assert any(c["Name"] == "Engine" for c in info["Server"]["Components"])


@pytest.mark.vm
@pytest.mark.timeout(120)
def test_start_leaves_a_docker_context_that_reaches_the_engine(vm_instance):
    """`pinnace start` writes the `pinnace` context (on a thread while the VM boots), and makes it
    current only with --use-context."""
    env = {k: v for k, v in vm_instance.env.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=60)

    host = json.loads(docker("context", "inspect", "pinnace").stdout)[0]["Endpoints"]["docker"]["Host"]
    assert host == vm_instance.docker_host
    assert docker("--context", "pinnace", "version", "--format", "{{.Server.Version}}").stdout.startswith("26.")
    assert docker("context", "show").stdout.strip() == "default", "not made current unless asked"
    again = vm_instance.pinnace("start", "--use-context")
    assert again.returncode == 0 and "docker context 'pinnace' is now current" in again.stdout, again.stdout
    try:
        assert docker("context", "show").stdout.strip() == "pinnace"
    finally:
        docker("context", "use", "default")


@pytest.mark.vm
@pytest.mark.timeout(180)
def test_run_echo_prints_hi(vm_instance, busybox):
    proc = vm_instance.docker("run", "--rm", busybox, "echo", "hi")
    assert proc.stdout == "hi\n"


@pytest.mark.vm
@pytest.mark.timeout(180)
def test_stdin_half_close_reaches_container(vm_instance, busybox):
    """`docker run -i` closes its side after stdin EOF; `cat` must see EOF, output must still arrive."""
    proc = vm_instance.docker("run", "-i", "--rm", busybox, "cat", input="data\n")
    assert proc.stdout == "data\n"


@pytest.mark.vm
@pytest.mark.timeout(180)
def test_output_continues_after_stdin_eof(vm_instance, busybox):
    """After the client half-closes (stdin EOF) the connection must stay up for the rest of the output."""
    proc = vm_instance.docker("run", "-i", "--rm", busybox, "sh", "-c", "cat; sleep 3; echo after-eof", input="data\n")
    assert proc.stdout == "data\nafter-eof\n"


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_stdin_bulk_through_attach_is_exact(vm_instance, busybox):
    payload = os.urandom(8 * MIB)
    proc = vm_instance.docker("run", "-i", "--rm", busybox, "sha256sum", input=payload)
    assert proc.stdout.split()[0].decode() == sha256(payload)


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_exec(vm_instance, busybox, res):
    name = res.container("exec")
    vm_instance.docker("run", "-d", "--name", name, busybox, "sleep", "600")
    assert vm_instance.docker("exec", name, "echo", "inside").stdout == "inside\n"
    assert vm_instance.docker("exec", name, "sh", "-c", "echo $HOSTNAME-$((6*7))").stdout.strip().endswith("-42")
    piped = vm_instance.docker("exec", "-i", name, "sh", "-c", "cat > /tmp/in && wc -c < /tmp/in", input="x" * 100000)
    assert piped.stdout.strip() == "100000"
    failed = vm_instance.docker("exec", name, "sh", "-c", "echo oops >&2; exit 3", check=False)
    assert failed.returncode == 3
    assert "oops" in failed.stderr


# --- builds ---------------------------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.timeout(600)
def test_build_with_large_context_offline(vm_instance, res, tmp_path):
    """A >= 50 MB build context goes up the socket intact (checked inside the built image)."""
    blob = os.urandom(52 * MIB)
    ctx = make_busybox_context(
        tmp_path / "ctx",
        BUSYBOX_PREAMBLE + "COPY blob.bin /data/blob.bin\nCMD [\"sha256sum\", \"/data/blob.bin\"]\n",
        {"blob.bin": blob},
    )
    size = sum(p.stat().st_size for p in ctx.iterdir())
    assert size >= 50 * MIB
    tag = res.image("bigctx")
    build = vm_instance.docker("build", "-t", tag, str(ctx), timeout=540)
    assert "Successfully tagged" in build.stdout or "Successfully built" in build.stdout, build.stdout
    run = vm_instance.docker("run", "--rm", tag)
    assert run.stdout.split()[0] == sha256(blob)


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_logs_follow_streams_incrementally(vm_instance, busybox, res):
    """`docker logs -f` lines arrive as the container prints them, not all at its exit."""
    name = res.container("logs")
    script = "sleep 1; for i in 1 2 3 4 5 6; do echo line$i; sleep 1; done"
    vm_instance.docker("run", "-d", "--name", name, busybox, "sh", "-c", script)
    proc = subprocess.Popen(["docker", "logs", "-f", name], env=docker_env(vm_instance), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    arrivals: list[tuple[float, str]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            arrivals.append((time.monotonic(), line.strip()))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [text for _, text in arrivals] == [f"line{i}" for i in range(1, 7)], proc.stderr.read()
    assert proc.returncode == 0
    # Printed one second apart: followed live they arrive spread out. At least the last three
    # are printed after `logs -f` attached, whatever the container start latency.
    times = [t for t, _ in arrivals]
    assert times[-1] - times[0] >= 2.0, arrivals
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert sum(1 for g in gaps if g >= 0.5) >= 2, gaps


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_events_stream_while_container_starts(vm_instance, busybox, res):
    """The SDK's streaming /events (one long-lived response) delivers a container's lifecycle live."""
    name = res.container("events")
    client = vm_instance.client()
    seen: list[tuple[float, str]] = []
    # The engine flushes the response headers at once, so when this returns we are subscribed.
    stream = client.events(decode=True, filters={"type": "container", "container": name})

    def collect() -> None:
        try:
            for event in stream:
                seen.append((time.monotonic(), event.get("Action") or event.get("status", "")))
                if seen[-1][1] == "destroy":
                    return
        except Exception:  # noqa: BLE001 - the stream is closed from the main thread on timeout
            pass

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        started = time.monotonic()
        vm_instance.docker("run", "--rm", "--name", name, busybox, "true")
        finished = time.monotonic()
        reader.join(timeout=60)
    finally:
        stream.close()
        client.close()
    actions = [a for _, a in seen]
    for expected in ("create", "start", "die", "destroy"):
        assert expected in actions, actions
    assert actions.index("create") < actions.index("start") < actions.index("die") < actions.index("destroy")
    # Streamed live: the start event reached us before `docker run` had even finished.
    start_seen = next(t for t, a in seen if a == "start")
    assert started <= start_seen <= finished, (started, start_seen, finished)


def engine_time(vm) -> str:  # noqa: ANN001 - conftest.Instance
    """The engine's clock (RFC 3339); --since/--until are compared against it, not ours."""
    return vm.docker("info", "--format", "{{.SystemTime}}").stdout.strip()


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_events_cli_since_until(vm_instance, busybox, res):
    name = res.container("evcli")
    since = engine_time(vm_instance)
    vm_instance.docker("run", "--rm", "--name", name, busybox, "true")
    until = engine_time(vm_instance)
    out = vm_instance.docker("events", "--since", since, "--until", until, "--filter", f"container={name}",
                             "--format", "{{.Action}}", timeout=60).stdout.split()
    for expected in ("create", "start", "die", "destroy"):
        assert expected in out, out


# --- bulk -----------------------------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_save_load_over_100mb(vm_instance, res):
    """`docker save | docker load` of an image with a 100 MB random layer, byte for byte."""
    tag = res.image("bulk")
    big = os.urandom(100 * MIB)
    imported = vm_instance.docker("import", "--change", "CMD [\"sh\"]", "--change", "ENV PATH=/bin", "-", tag,
                                  input=rootfs_tar(extra={"big.bin": big}), timeout=600)
    assert imported.stdout.strip().startswith(b"sha256:")
    layers_before = vm_instance.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", tag).stdout

    saved = vm_instance.docker("save", tag, input=b"", timeout=600).stdout
    assert len(saved) >= 100 * MIB, len(saved)
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        sizes = sorted(m.size for m in tar.getmembers() if m.isfile())
    assert sizes[-1] >= 100 * MIB, sizes[-3:]
    vm_instance.docker("rmi", tag)
    loaded = vm_instance.docker("load", input=saved, timeout=600)
    assert f"Loaded image: {tag}".encode() in loaded.stdout, loaded.stdout
    layers_after = vm_instance.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", tag).stdout
    assert layers_after == layers_before  # content-addressed: the same bytes came back
    check = vm_instance.docker("run", "--rm", tag, "sha256sum", "/big.bin", timeout=300)
    assert check.stdout.split()[0] == sha256(big)


@pytest.mark.vm
@pytest.mark.timeout(300)
def test_cp_both_ways(vm_instance, busybox, res, tmp_path):
    name = res.container("cp")
    vm_instance.docker("run", "-d", "--name", name, busybox, "sleep", "600")
    up = tmp_path / "up.bin"
    up.write_bytes(os.urandom(12 * MIB + 123))
    vm_instance.docker("cp", str(up), f"{name}:/tmp/up.bin")
    inside = vm_instance.docker("exec", name, "sha256sum", "/tmp/up.bin").stdout.split()[0]
    assert inside == file_sha256(up)

    vm_instance.docker("exec", name, "dd", "if=/dev/urandom", "of=/tmp/down.bin", "bs=1M", "count=10")
    made = vm_instance.docker("exec", name, "sha256sum", "/tmp/down.bin").stdout.split()[0]
    down = tmp_path / "down.bin"
    vm_instance.docker("cp", f"{name}:/tmp/down.bin", str(down))
    assert down.stat().st_size == 10 * MIB
    assert file_sha256(down) == made
    # And back out the file that went in.
    back = tmp_path / "back.bin"
    vm_instance.docker("cp", f"{name}:/tmp/up.bin", str(back))
    assert file_sha256(back) == file_sha256(up)


# --- concurrency and failure ----------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.timeout(300)
def test_100_concurrent_clients(vm_instance):
    """100 clients connect at once, each doing /_ping then /containers/json on its connection."""
    path = str(vm_instance.docker_socket)
    count = 100
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def client(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            conn = UnixHTTPConnection(path, timeout=180)
            try:
                conn.request("GET", "/_ping")
                ping = conn.getresponse()
                ping_body = ping.read()
                conn.request("GET", "/containers/json?all=1")  # same connection: keep-alive
                listing = conn.getresponse()
                listing_body = listing.read()
            finally:
                conn.close()
            results[i] = (ping.status, ping_body, listing.status, type(json.loads(listing_body)).__name__)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    baseline = connected_clients(vm_instance.docker_socket)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    failures = [(i, r) for i, r in enumerate(results) if r != (200, b"OK", 200, "list")]
    assert not failures, f"{len(failures)} of {count} clients failed, e.g. {failures[:5]}"
    wait_for("the clients' connections closed",
             lambda: connected_clients(vm_instance.docker_socket) <= baseline, 30, 0.2)


def _tar_header_for(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


@pytest.mark.vm
@pytest.mark.timeout(300)
def test_client_killed_mid_load_leaves_no_stuck_channel(vm_instance):
    """SIGKILL the docker CLI in the middle of a `docker load` upload: the forwarder must drop
    that connection (its server-side socket disappears) and the engine socket keeps working."""
    sock_path = vm_instance.docker_socket
    # By inode, not by count: another client's idle connection closing meanwhile (an SDK client
    # left to the garbage collector, say) must not hide the upload's, nor pass for its end.
    before = accepted_sockets(sock_path)
    proc = subprocess.Popen(["docker", "load"], env=docker_env(vm_instance), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sent = 0
    block = os.urandom(MIB)
    stop = threading.Event()

    def feed() -> None:
        nonlocal sent
        assert proc.stdin is not None
        try:
            # A valid tar stream announcing a 1 GiB member: the engine keeps reading (never
            # errors out early), so the connection is really mid-upload when the client dies.
            proc.stdin.write(_tar_header_for("blobs/huge", 1 << 30))
            while not stop.is_set():
                proc.stdin.write(block)
                sent += len(block)
        except (BrokenPipeError, OSError, ValueError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_for("24 MiB to go up", lambda: sent >= 24 * MIB, 120, 0.2)
        uploads = accepted_sockets(sock_path) - before
        assert uploads, "the upload's connection is not visible in /proc/net/unix"
    finally:
        proc.kill()
        proc.wait()
        stop.set()
        feeder.join(timeout=10)
    # The forwarder must notice the hang-up and drop the client and its channel.
    wait_for(f"the upload's connections {sorted(uploads)} dropped",
             lambda: not accepted_sockets(sock_path) & uploads, 30, 0.2)
    status, body = api_get(str(sock_path), "/_ping")
    assert (status, body) == (200, b"OK")
    assert vm_instance.docker("version", "--format", "{{.Server.Version}}").stdout.startswith("26.")
    # And the engine state is readable (the aborted load left nothing wedged).
    assert vm_instance.docker("image", "ls", "-q").returncode == 0


# --- the SSH link ---------------------------------------------------------------------------


def _agent_connects(vm) -> int:  # noqa: ANN001 - conftest.Instance
    return vm.paths.agent_log.read_text(errors="replace").count("ssh connected to instance")


def _restart_guest_sshd(vm) -> None:  # noqa: ANN001 - conftest.Instance
    """Kill the guest's sshd listener *and* every session (the agent's too); init respawns sshd.

    The guest busybox has no pkill: pidof/kill it is. Killing only the listener (`sshd -D`) would
    leave the agent's established session running and prove nothing about reconnecting.
    """
    before = guest_sh(vm, "pidof sshd").stdout.split()
    assert before, "no sshd listener in the guest?"
    guest_sh(vm, "kill $(pidof sshd) $(pidof sshd-session)")  # our own session dies too: rc 255
    wait_for("guest sshd respawned",
             lambda: (p := guest_sh(vm, "pidof sshd")).returncode == 0 and p.stdout.split() != before, 60, 0.5)


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_guest_sshd_restart_next_request_works(vm_instance, busybox):
    assert vm_instance.docker("version", "--format", "{{.Server.Version}}").returncode == 0
    connects = _agent_connects(vm_instance)
    _restart_guest_sshd(vm_instance)
    # The very next docker request (no retry) works: the agent notices its dead transport and
    # reconnects with the pinned host key.
    proc = vm_instance.docker("run", "--rm", busybox, "echo", "after-restart", check=False)
    assert proc.returncode == 0 and proc.stdout == "after-restart\n", proc.stderr
    assert _agent_connects(vm_instance) > connects, "the agent did not reconnect"


def _ping_ok(vm) -> bool:  # noqa: ANN001 - conftest.Instance
    try:
        return api_get(str(vm.docker_socket), "/_ping", timeout=15) == (200, b"OK")
    except (OSError, http.client.HTTPException):
        return False


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_request_during_sshd_restart_waits_for_reconnect(vm_instance):
    """A request made while sshd is being respawned should wait for it, not be reset."""
    guest_sh(vm_instance, "kill $(pidof sshd) $(pidof sshd-session)")
    try:
        assert api_get(str(vm_instance.docker_socket), "/_ping", timeout=60) == (200, b"OK")
    finally:
        wait_for("the engine socket to recover", lambda: _ping_ok(vm_instance), 60, 0.5)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _transport(vm) -> str:  # noqa: ANN001 - conftest.Instance
    return json.loads(vm.pinnace("status", "--json", timeout=60).stdout).get("socket_transport", "")


@pytest.mark.vm
@pytest.mark.timeout(240)
def test_openssh_carries_the_socket_and_a_killed_master_costs_no_request(vm_instance):
    from hypervisor.openssh_mux import master_pid

    wait_for("the OpenSSH master carrying the socket",
             lambda: _transport(vm_instance).endswith("ControlMaster"), 90, 0.5)
    sock = vm_instance.docker_socket
    master_listener, agent_listener = sock.with_name(MASTER_LISTENER), sock.with_name(OWN_NAME)
    assert os.stat(sock).st_ino == os.stat(master_listener).st_ino
    assert _mode(master_listener) == 0o600
    pid = master_pid(vm_instance.paths.ssh_mux_socket)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # the agent takes the socket back as the master dies: the next request needs no retry
    wait_for("the agent's listener back",
             lambda: os.stat(sock).st_ino == os.stat(agent_listener).st_ino, 5, 0.01)
    assert vm_instance.docker("version", "--format", "{{.Server.Version}}").stdout.startswith("26.")
    assert "OpenSSH master exited: killed by signal 9" in _transport(vm_instance)
    wait_for("a new master", lambda: _transport(vm_instance).endswith("ControlMaster"), 120, 0.5)
    assert master_pid(vm_instance.paths.ssh_mux_socket) not in (None, pid)
    assert vm_instance.docker("version", "--format", "{{.Server.Version}}").stdout.startswith("26.")


@pytest.mark.vm
@pytest.mark.timeout(60)
def test_socket_and_key_permissions(vm_instance):
    from hypervisor.keys import CLIENT_KEY_NAME, HOST_KEY_NAME

    sock = vm_instance.docker_socket
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert _mode(sock) == 0o600, oct(_mode(sock))
    assert _mode(sock.parent) == 0o700, oct(_mode(sock.parent))
    assert os.stat(sock).st_uid == os.getuid()
    assert _mode(vm_instance.paths.control_socket) == 0o600
    keys = vm_instance.paths.keys_dir / vm_instance.name
    assert _mode(keys) == 0o700, oct(_mode(keys))
    for key in (CLIENT_KEY_NAME, HOST_KEY_NAME):
        assert _mode(keys / key) == 0o600, f"{key}: {oct(_mode(keys / key))}"


def _tampered(public_line: str) -> str:
    """The same ed25519 key line with one bit of the key itself flipped (type and length intact)."""
    import base64

    kind, b64, *comment = public_line.split()
    blob = bytearray(base64.b64decode(b64))
    blob[-1] ^= 0x01
    return " ".join([kind, base64.b64encode(bytes(blob)).decode(), *comment])


@pytest.mark.vm
@pytest.mark.timeout(120)
def test_wrong_pinned_host_key_is_refused(vm_instance, tmp_path):
    from hypervisor.errors import HostKeyMismatchError
    from hypervisor.keys import ensure_instance_keys
    from hypervisor.ssh import GuestSSH, SSHTarget

    keys = ensure_instance_keys(vm_instance.paths.keys_dir, vm_instance.name)
    client_key = tmp_path / "id_ed25519"
    shutil.copyfile(keys.client_key, client_key)
    client_key.chmod(0o600)
    wrong = _tampered(keys.host_public)
    assert wrong != keys.host_public
    port = ssh_port(vm_instance)
    target = SSHTarget("127.0.0.1", port, "root", client_key, wrong, vm_instance.name)

    with GuestSSH(target) as ssh, pytest.raises(HostKeyMismatchError) as info:
        ssh.connect(timeout=30)
    message = str(info.value)
    assert f"instance '{vm_instance.name}'" in message, message
    assert re.search(r"does not match|mismatch", message), message

    # Never retried: waiting cannot fix a wrong key.
    started = time.monotonic()
    with GuestSSH(target) as ssh, pytest.raises(HostKeyMismatchError):
        ssh.wait_until_reachable(time.monotonic() + 60, attempt_timeout=30)
    assert time.monotonic() - started < 30
    # The right key still works with the same copied client key, and the engine is unaffected.
    with GuestSSH(SSHTarget("127.0.0.1", port, "root", client_key, keys.host_public, vm_instance.name)) as ok:
        ok.connect(timeout=30)
        assert ok.is_active()
    assert vm_instance.docker("version", "--format", "{{.Server.Version}}").stdout.startswith("26.")
