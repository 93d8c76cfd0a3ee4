"""`pinnace diagnose` without a VM: the checks that need none run against a PINNACE_HOME in
tmp_path (a fake QEMU, a fake image), each fault flips its own check only; the table and JSON
reports, the exit code, a check that raises, the CLI, the support bundle, and the pure parsers
of what the guest and the probe container print."""

from __future__ import annotations

import json
import os
import socket
import stat
import tarfile
from collections import namedtuple
from pathlib import Path

import pytest

from app import cli
from hypervisor import diagnose
from hypervisor.control import Status
from hypervisor.diagnose import bundle, checks_host, checks_vm, engine_api, report, runner
from hypervisor.diagnose.checks_vm import Mount, parse_proc_mounts, share_problems
from hypervisor.diagnose.context import Context
from hypervisor.diagnose.result import CheckResult, Finding
from hypervisor.hostinfo import host_arch
from hypervisor.paths import Paths
from vmimage import manifest as image_manifest

VM_KEYS = {"engine", "clock", "dns_guest", "dns_container", "host_docker_internal", "networks", "ports", "shares"}
FILES = {"kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.img", "cmdline": "cmdline"}
Usage = namedtuple("Usage", "total used free")


def make_image(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    for kind, name in FILES.items():
        (directory / name).write_bytes(f"{kind} ".encode() * 4096)
        artifacts[kind] = image_manifest.describe(directory / name)
    image_manifest.save(directory, image_manifest.Manifest(
        name="pinnace", version="0.1.0", arch=host_arch(), suite="trixie", kernel_version="6.12-test",
        kernel_config_sha256="0" * 64, cmdline="quiet", artifacts=artifacts))


def fake_program(path: Path, text: str) -> Path:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """An instance that never ran, with a fake QEMU (TCG only), a fake image and plenty of room."""
    for name in ("PINNACE_ARCH", "PINNACE_CACHE_DIR", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PINNACE_HOME", str(tmp_path / "home"))
    image = tmp_path / "image"
    make_image(image)
    monkeypatch.setenv("PINNACE_IMAGE_DIR", str(image))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = fake_program(bin_dir / f"qemu-system-{host_arch()}",
                        'case "$1" in --version) echo "QEMU emulator version 8.2.2";;\n'
                        '-accel) printf "Accelerators supported in QEMU binary:\\ntcg\\n";; esac\n')
    monkeypatch.setenv("PINNACE_QEMU", str(qemu))
    monkeypatch.setenv("PINNACE_QEMU_IMG", str(fake_program(bin_dir / "qemu-img", 'echo "qemu-img version 8.2.2"\n')))
    monkeypatch.setattr(checks_host.shutil, "disk_usage", lambda _path: Usage(100 << 30, 10 << 30, 90 << 30))
    paths = Paths.for_instance("default")
    paths.ensure_dirs()  # what every pinnace command does first
    return paths


def by_key(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.key: r for r in results}


def failing(results: list[CheckResult]) -> set[str]:
    return {r.key for r in results if r.outcome == "fail"}


# --- the checks that need no VM ------------------------------------------------------------------


def test_a_stopped_instance_runs_the_host_checks_and_skips_the_rest(home: Paths) -> None:
    seen: list[CheckResult] = []
    results = diagnose.run_checks(home, on_result=seen.append)
    assert seen == results
    assert [r.key for r in results] == [c.key for c in runner.CHECKS]
    found = by_key(results)
    assert failing(results) == set(), [(r.key, r.detail) for r in results if r.outcome == "fail"]
    assert found["qemu"].outcome == "pass" and "8.2.2" in found["qemu"].detail
    assert found["image"].outcome == "pass" and "4 artefacts match" in found["image"].detail
    assert found["accel"].outcome == "warn" and "TCG" in found["accel"].detail and found["accel"].hint
    assert found["data_disk"].outcome == "skip"
    assert found["processes"].outcome == "pass"
    assert found["permissions"].outcome == "pass"
    for key in VM_KEYS:
        assert (found[key].outcome, found[key].detail) == ("skip", "the VM is not running"), key
    assert diagnose.exit_code(results) == 0
    for r in results:
        assert "\n" not in r.detail and "\n" not in r.hint


def test_a_flipped_byte_in_the_image_fails_only_the_image_check(home: Paths) -> None:
    rootfs = Path(os.environ["PINNACE_IMAGE_DIR"]) / "rootfs.img"
    with open(rootfs, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    results = diagnose.run_checks(home)
    assert failing(results) == {"image"}
    image = by_key(results)["image"]
    assert "rootfs" in image.detail and str(rootfs) in image.detail and "does not match" in image.detail
    assert "pinnace image build" in image.hint
    assert diagnose.exit_code(results) == 1


def test_a_missing_image_fails_with_its_fix(home: Paths, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PINNACE_IMAGE_DIR", str(tmp_path / "nowhere"))
    image = by_key(diagnose.run_checks(home))["image"]
    assert image.outcome == "fail" and "no guest image" in image.detail and "pinnace image build" in image.hint


def test_a_private_dir_at_0755_fails_only_the_permissions_check(home: Paths) -> None:
    home.config_dir.chmod(0o755)
    results = diagnose.run_checks(home)
    assert failing(results) == {"permissions"}
    found = by_key(results)["permissions"]
    assert str(home.config_dir) in found.detail and "0755" in found.detail
    assert f"chmod 700 {home.config_dir}" in found.hint


def test_an_engine_socket_others_may_use_fails_the_permissions_check(home: Paths) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(home.docker_socket))
        home.docker_socket.chmod(0o666)
        found = by_key(diagnose.run_checks(home))["permissions"]
    finally:
        sock.close()
    assert found.outcome == "fail"
    assert str(home.docker_socket) in found.detail and "0666" in found.detail and "0600" in found.detail


def test_a_key_someone_loosened_fails_the_permissions_check(home: Paths) -> None:
    from hypervisor.keys import ensure_instance_keys

    keys = ensure_instance_keys(home.keys_dir, home.instance)
    keys.host_key.chmod(0o644)
    found = by_key(diagnose.run_checks(home))["permissions"]
    assert found.outcome == "fail" and str(keys.host_key) in found.detail


def test_a_missing_qemu_fails_with_how_to_install_it(home: Paths, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PINNACE_QEMU", str(tmp_path / "no-such-qemu"))
    found = by_key(diagnose.run_checks(home))["qemu"]
    assert found.outcome == "fail" and "no-such-qemu" in found.detail and "install" in found.hint


def test_little_free_space_fails_and_some_warns(home: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks_host.shutil, "disk_usage", lambda _p: Usage(100 << 30, 99 << 30, 300 << 20))
    found = by_key(diagnose.run_checks(home))["disk_space"]
    assert found.outcome == "fail" and "0.3 GiB free" in found.detail and "docker system prune" in found.hint
    monkeypatch.setattr(checks_host.shutil, "disk_usage", lambda _p: Usage(100 << 30, 97 << 30, 3 << 30))
    assert by_key(diagnose.run_checks(home))["disk_space"].outcome == "warn"


def test_a_stale_qemu_pidfile_and_a_crashed_vm(home: Paths) -> None:
    home.qemu_pidfile.write_text(str(os.getpid()))  # alive, but not a QEMU of this instance
    found = by_key(diagnose.run_checks(home))["processes"]
    assert found.outcome == "warn" and "stale" in found.detail
    home.qemu_pidfile.unlink()
    home.state_file.write_text(json.dumps(Status("default", state="error", reason="QEMU exited (code 1)").to_dict()))
    found = by_key(diagnose.run_checks(home))["processes"]
    assert found.outcome == "fail" and "QEMU exited (code 1)" in found.detail and "pinnace start" in found.hint


def test_a_check_that_raises_is_one_failed_row(home: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_ctx: Context) -> Finding:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(runner, "CHECKS", (runner.Check("broken", "Broken", broken), *runner.CHECKS[:1]))
    results = diagnose.run_checks(home)
    assert [r.key for r in results] == ["broken", "qemu"]
    assert results[0].outcome == "fail" and results[0].detail == "the check itself failed: boom"


def test_a_paused_or_starting_vm_skips_the_vm_checks_saying_why(home: Paths) -> None:
    for state, reason in (("paused", "the disk is full"), ("starting", "")):
        ctx = Context(home, os.environ, checks_host.Context.gather(home).platform,
                      Status("default", state=state, reason=reason), agent_answers=True)
        found = checks_vm.check_engine(ctx)
        assert found.outcome == "skip" and state in found.detail and (reason in found.detail)
        assert checks_vm.check_dns_container(ctx).outcome == "skip"


def test_port_conflicts_and_clock_offsets_from_the_status(home: Paths) -> None:
    platform = Context.gather(home).platform
    taken = {"proto": "tcp", "host_ip": "127.0.0.1", "host_port": 8080, "error": "host port 127.0.0.1:8080/tcp "
             "for container web (port 80/tcp) is already in use on the host"}
    status = Status("default", state="running", port_forwards=[{**taken, "error": ""}, taken], clock_offset_s=0.004)
    ctx = Context(home, os.environ, platform, status, agent_answers=True)
    ports = checks_vm.check_ports(ctx)
    assert ports.outcome == "fail" and "already in use" in ports.detail and "-p OTHER:PORT" in ports.hint
    assert checks_vm.check_clock(ctx).outcome == "pass"
    status.port_forwards, status.clock_offset_s = [{**taken, "error": ""}], 120.0
    assert checks_vm.check_ports(ctx).outcome == "pass"
    assert checks_vm.check_clock(ctx).outcome == "fail"
    status.clock_offset_s, status.clock_warning = 0.0, "the guest clock could not be set (after boot): timeout"
    assert checks_vm.check_clock(ctx).outcome == "warn"


# --- report and exit code ------------------------------------------------------------------------

RESULTS = [
    CheckResult("qemu", "QEMU installed", "pass", "QEMU 8.2.2 at /usr/bin/qemu-system-x86_64", ""),
    CheckResult("accel", "Accelerator", "warn", "TCG: no hardware accelerator", "make /dev/kvm usable"),
    CheckResult("image", "Guest image matches its manifest", "fail", "rootfs does not match", "pinnace image build"),
    CheckResult("engine", "Engine answers /_ping", "skip", "the VM is not running", ""),
]


def test_the_table_has_a_row_per_check_and_the_fix_under_it() -> None:
    text = report.table(RESULTS)
    lines = text.splitlines()
    assert lines[0].split() == ["check", "detail"]
    assert lines[1].startswith("pass  QEMU installed") and lines[1].endswith("/usr/bin/qemu-system-x86_64")
    assert lines[2].startswith("warn  Accelerator")
    assert lines[3].strip() == "fix: make /dev/kvm usable"
    assert lines[4].startswith("fail  Guest image matches its manifest")
    assert lines[6].startswith("skip  Engine answers /_ping")
    assert lines[-1] == "1 passed, 1 warnings, 1 failed, 1 skipped: Guest image matches its manifest"
    columns = {line.index("QEMU 8.2.2") for line in lines if "QEMU 8.2.2" in line}
    assert columns == {lines[2].index("TCG")}  # details line up


def test_the_json_report() -> None:
    doc = json.loads(report.to_json(RESULTS, "dev"))
    assert doc["instance"] == "dev" and doc["ok"] is False
    assert doc["summary"] == {"pass": 1, "warn": 1, "fail": 1, "skip": 1}
    assert doc["checks"][2] == {"key": "image", "title": "Guest image matches its manifest", "outcome": "fail",
                                "detail": "rootfs does not match", "hint": "pinnace image build"}


def test_exit_code_is_zero_only_when_nothing_fails() -> None:
    assert diagnose.exit_code(RESULTS) == 1
    assert diagnose.exit_code([r for r in RESULTS if r.outcome != "fail"]) == 0
    assert diagnose.exit_code([]) == 0


# --- the CLI -------------------------------------------------------------------------------------


def test_the_cli_prints_the_table_and_exits_by_the_results(home: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["diagnose"]) == 0
    out = capsys.readouterr().out
    assert "Diagnosing instance 'default'" in out and "pass  Guest image matches its manifest" in out
    assert "skip  Engine answers /_ping" in out and "the VM is not running" in out
    home.config_dir.chmod(0o755)  # tightened again by the CLI itself (ensure_dirs) before the checks
    assert cli.main(["diagnose", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and {c["key"] for c in doc["checks"]} >= VM_KEYS
    assert stat.S_IMODE(home.config_dir.stat().st_mode) == 0o700


def test_the_cli_exits_1_on_a_failure_without_a_traceback(home: Paths, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PINNACE_IMAGE_DIR", str(tmp_path / "nowhere"))
    assert cli.main(["diagnose"]) == 1
    captured = capsys.readouterr()
    assert "fail  Guest image matches its manifest" in captured.out and "Traceback" not in captured.err
    with pytest.raises(SystemExit) as usage:
        cli.main(["diagnose", "--json", "--bundle"])
    assert usage.value.code == 2


# --- the support bundle --------------------------------------------------------------------------

PEM = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
       "QyNTUxOQAAACDnlnblJKtuK6oYo3bdZwe9ZIq5tdIK8fJ7ko5nHZL1ogAAAJh7kYAYe5GA\n"
       "-----END OPENSSH PRIVATE KEY-----\n")


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_the_bundle_holds_what_it_lists_and_no_secret(home: Paths, tmp_path: Path) -> None:
    from hypervisor.keys import ensure_instance_keys

    keys = ensure_instance_keys(home.keys_dir, home.instance)
    key_bytes = keys.client_key.read_bytes()
    home.log_dir.mkdir(parents=True, exist_ok=True)
    (home.log_dir / "agent.log").write_text(f"started\n{PEM}Authorization: Bearer s3cr3t-token\n"
                                            f'{{"auths": {{"r": {{"auth": "dXNlcjpodW50ZXIy"}}}}}}\nlast line\n')
    (home.log_dir / "serial.log").write_bytes(b"x" * 100 + b"\n" + b"y" * (3 << 20) + b"\nend of serial\n")
    (home.log_dir / "virtiofsd-pinnace0.log").write_text("virtiofsd ready\n")
    lines: list[str] = []
    dest = tmp_path / "out" / "support.tar.gz"
    written = diagnose.write_bundle(home, dest, on_progress=lines.append)
    assert written == dest and stat.S_IMODE(dest.stat().st_mode) == 0o600
    got = members(dest)
    for name in ("README.txt", "versions.json", "status.json", "settings.toml", "checks.json", "logs/agent.log",
                 "logs/serial.log", "logs/virtiofsd-pinnace0.log", "image/manifest.json", "problems.txt"):
        assert name in got, sorted(got)
    assert json.loads(got["versions.json"])["qemu"] == "QEMU emulator version 8.2.2"
    checks = json.loads(got["checks.json"])
    assert [c["key"] for c in checks["checks"]] == [c.key for c in runner.CHECKS]
    agent_log = got["logs/agent.log"].decode()
    assert "started" in agent_log and "last line" in agent_log
    assert len(got["logs/serial.log"]) <= (2 << 20) + 100 and got["logs/serial.log"].endswith(b"end of serial\n")
    everything = b"".join(got.values())
    for secret in (b"PRIVATE KEY-----", b"s3cr3t-token", b"dXNlcjpodW50ZXIy", key_bytes, key_bytes.splitlines()[1]):
        assert secret not in everything
    assert not any(name.startswith("keys") or "id_ed25519" in name for name in got)
    assert "running the checks" in lines and lines[-1] == f"writing {dest}"
    assert any(line.startswith("pass  Guest image") for line in lines)


def test_the_bundle_never_reads_the_keys_directory(home: Paths, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_tail = bundle.tail_bytes

    def watching(path: Path, limit: int = bundle.LOG_LIMIT) -> bytes:
        opened.append(str(path))
        return real_tail(path, limit)

    monkeypatch.setattr(bundle, "tail_bytes", watching)
    home.log_dir.mkdir(parents=True, exist_ok=True)
    link = home.log_dir / "agent.log"
    (home.keys_dir / "default").mkdir(parents=True, exist_ok=True)
    (home.keys_dir / "default" / "id_ed25519").write_text("NOT-FOR-THE-BUNDLE\n")
    link.symlink_to(home.keys_dir / "default" / "id_ed25519")
    archive = diagnose.write_bundle(home, tmp_path)
    assert archive.parent == tmp_path and archive.name.startswith("pinnace-diagnose-default-")
    got = members(archive)
    assert b"NOT-FOR-THE-BUNDLE" not in b"".join(got.values())
    assert not any("keys" in path for path in opened)
    assert "logs/agent.log: refused" in got["problems.txt"].decode()


def test_tail_bytes_starts_at_a_line(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"first line\nsecond line\nthird\n")
    assert bundle.tail_bytes(path, 1000) == b"first line\nsecond line\nthird\n"
    tail = bundle.tail_bytes(path, 15)
    assert tail.endswith(b"\nthird\n") and b"second" not in tail and tail.startswith(b"[... the first")


# --- what the guest and the probe container print ------------------------------------------------


def test_lookups_in_the_probe_container_are_parsed() -> None:
    script = engine_api.lookup_script(["registry-1.docker.io", "host.docker.internal"], 10)
    assert "/bin/busybox timeout 10 /bin/busybox nslookup registry-1.docker.io" in script
    output = ("@@begin registry-1.docker.io\nServer:\t\t10.0.2.3\nName:\tregistry-1.docker.io\n"
              "@@end registry-1.docker.io 0\n@@begin host.docker.internal\n"
              "** server can't find host.docker.internal: NXDOMAIN\n@@end host.docker.internal 1\n")
    found = engine_api.parse_lookups(output)
    assert found["registry-1.docker.io"][0] == 0
    assert found["host.docker.internal"] == (1, "** server can't find host.docker.internal: NXDOMAIN")
    with pytest.raises(ValueError):
        engine_api.lookup_script(["x; rm -rf /"])


def test_an_import_error_in_the_progress_stream_is_found() -> None:
    assert engine_api.stream_error(b'{"status":"Downloading"}\n{"errorDetail":{},"error":"no space"}\n') == "no space"
    assert engine_api.stream_error({"status": "sha256:abc"}) == ""
    assert engine_api.EMPTY_TAR == bytes(10240)


def test_proc_mounts_and_share_problems() -> None:
    text = ("overlay / overlay rw,relatime 0 0\n"
            "pinnace0 /home/me\\040with\\040space 9p rw,sync,dirsync,trans=virtio 0 0\n"
            "pinnace1 /srv/ro virtiofs ro,relatime 0 0\n"
            "tmpfs /tmp tmpfs rw 0 0\n")
    mounts = parse_proc_mounts(text)
    assert mounts[1] == Mount("pinnace0", "/home/me with space", "9p", ("rw", "sync", "dirsync", "trans=virtio"))
    shares = [{"path": "/home/me with space", "read_only": False}, {"path": "/srv/ro", "read_only": True}]
    answers = {"/home/me with space": True, "/srv/ro": True}
    assert share_problems(shares, mounts, answers, is_dir=lambda _p: True) == []
    assert share_problems(shares, mounts, answers, is_dir=lambda p: p != "/srv/ro") == [
        "the shared folder /srv/ro no longer exists on the host"]
    assert share_problems([{"path": "/tmp/x"}], mounts, {}, is_dir=lambda _p: True) == [
        "/tmp/x is not mounted in the VM"]
    assert share_problems([{"path": "/tmp"}], mounts, {}, is_dir=lambda _p: True) == [
        "/tmp is a tmpfs mount in the VM, not the shared folder"]
    rw = [Mount("pinnace1", "/srv/ro", "virtiofs", ("rw",))]
    assert "read-only" in share_problems(shares[1:], rw, {}, is_dir=lambda _p: True)[0]
    assert "does not answer" in share_problems(shares[1:], mounts, {"/srv/ro": False}, is_dir=lambda _p: True)[0]


# --- the engine checks against a fake engine on a unix socket --------------------------------------


class FakeEngine:
    """HTTP/1.0 on a unix socket, answering what the checks ask; records every request."""

    def __init__(self, path: Path, logs: bytes) -> None:
        import threading

        self.path, self.logs = path, logs
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.images: set[str] = set()
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                raw = b""
                while b"\r\n\r\n" not in raw:
                    raw += conn.recv(65536)
                head, _, body = raw.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                while len(body) < int(headers.get("content-length", "0")):
                    body += conn.recv(65536)
                self.requests.append((method, target, headers, body))
                code, answer = self.answer(method, target, body)
                conn.sendall(f"HTTP/1.0 {code} X\r\nContent-Type: application/json\r\n\r\n".encode() + answer)

    def answer(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        path = target.split("?", 1)[0]
        if path == "/_ping":
            return 200, b"OK"
        if path == "/images/pinnace-diagnose:empty/json":
            if "pinnace-diagnose:empty" in self.images:
                return 200, b"{}"
            return 404, b'{"message": "No such image: pinnace-diagnose:empty"}'
        if path == "/images/create":
            self.images.add("pinnace-diagnose:empty")
            return 200, b'{"status":"sha256:0123"}\n'
        if path == "/containers/create":
            return 201, b'{"Id": "c0ffee", "Warnings": []}'
        if path in ("/containers/c0ffee/start", "/containers/c0ffee"):
            return 204, b""
        if path == "/containers/c0ffee/wait":
            return 200, b'{"StatusCode": 0}'
        if path == "/containers/c0ffee/logs":
            return 200, b"\x01\x00\x00\x00" + len(self.logs).to_bytes(4, "big") + self.logs
        if path == "/networks":
            return 200, json.dumps([
                {"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16"}]}},
                {"Name": "corp", "IPAM": {"Config": [{"Subnet": "10.20.0.0/16"}]}}]).encode()
        return 404, b'{"message": "page not found"}'

    def close(self) -> None:
        self.server.close()


def test_the_engine_checks_through_a_fake_engine(home: Paths, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from hypervisor.diagnose import routes

    lookups = (b"@@begin registry-1.docker.io\nName: registry-1.docker.io\n@@end registry-1.docker.io 0\n"
               b"@@begin host.docker.internal\n** server can't find host.docker.internal: NXDOMAIN\n"
               b"@@end host.docker.internal 1\n")
    fake = FakeEngine(tmp_path / "engine.sock", lookups)
    monkeypatch.setattr(checks_vm, "host_routes", lambda: [routes.Route(routes.parse_network("10.0.0.0/8"), "tun0")])
    monkeypatch.setattr(checks_vm, "host_resolves", lambda _name, timeout=10: True)
    try:
        ctx = Context(home, os.environ, Context.gather(home).platform,
                      Status("default", state="running", engine_version="26.1.5"), agent_answers=True)
        ctx.engine_address = lambda: tmp_path / "engine.sock"  # type: ignore[method-assign]
        engine = checks_vm.check_engine(ctx)
        assert engine.outcome == "pass" and "Docker 26.1.5 answered /_ping" in engine.detail and ctx.engine_ok
        dns = checks_vm.check_dns_container(ctx)
        assert dns.outcome == "pass" and "a container resolves registry-1.docker.io" in dns.detail
        alias = checks_vm.check_host_alias(ctx)  # no guest to ask: an image without the alias
        assert alias.outcome == "skip" and "not provided yet" in alias.detail and "10.0.2.2" in alias.hint
        monkeypatch.setattr(checks_vm, "_guest_provides_alias", lambda _ctx: True)
        alias = checks_vm.check_host_alias(ctx)  # the image's DNS defines it, yet it does not resolve
        assert alias.outcome == "fail" and "NXDOMAIN" in alias.detail and "pinnace restart" in alias.hint
        networks = checks_vm.check_networks(ctx)
        assert networks.outcome == "fail" and "corp (10.20.0.0/16)" in networks.detail and "tun0" in networks.detail
    finally:
        fake.close()
    calls = [(m, t.split("?")[0]) for m, t, _, _ in fake.requests]
    assert calls == [("GET", "/_ping"), ("GET", "/images/pinnace-diagnose:empty/json"), ("POST", "/images/create"),
                     ("POST", "/containers/create"), ("POST", "/containers/c0ffee/start"),
                     ("POST", "/containers/c0ffee/wait"), ("GET", "/containers/c0ffee/logs"),
                     ("DELETE", "/containers/c0ffee"), ("GET", "/networks")]  # the probe ran once, for both rows
    _, target, headers, body = fake.requests[2]
    assert "fromSrc=-" in target and "repo=pinnace-diagnose" in target and "tag=empty" in target
    assert headers["content-type"] == "application/x-tar" and body == engine_api.EMPTY_TAR
    spec = json.loads(fake.requests[3][3])
    assert spec["Image"] == "pinnace-diagnose:empty" and spec["Entrypoint"] == ["/bin/busybox"]
    assert spec["HostConfig"]["Binds"] == ["/usr/bin/busybox:/bin/busybox:ro"] and spec["Cmd"][:2] == ["sh", "-c"]
    assert fake.requests[7][1].endswith("force=1")


def test_an_engine_that_does_not_answer_fails_and_its_dependents_skip(home: Paths, tmp_path: Path) -> None:
    ctx = Context(home, os.environ, Context.gather(home).platform, Status("default", state="running"),
                  agent_answers=True)
    ctx.engine_address = lambda: tmp_path / "missing.sock"  # type: ignore[method-assign]
    engine = checks_vm.check_engine(ctx)
    assert engine.outcome == "fail" and "no engine socket" in engine.detail and "pinnace restart" in engine.hint
    for check in (checks_vm.check_dns_container, checks_vm.check_host_alias, checks_vm.check_networks):
        found = check(ctx)
        assert (found.outcome, found.detail) == ("skip", "the engine is not answering")
