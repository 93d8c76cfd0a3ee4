"""Issue 7: aarch64 guest (fragment, recipe, foreign guest arch), foreign-arch containers (binfmt),
and the Windows control transport (pure parts here; the pipe round trip needs Windows)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from app import dockerctx
from hypervisor import accel, launcher
from hypervisor.accel import AccelFacts, ProbeResult
from hypervisor.control import PipeStream, is_pipe
from hypervisor.errors import AcceleratorError, SettingsError
from hypervisor.hostinfo import guest_arch
from hypervisor.paths import Paths
from vmimage.errors import RecipeError
from vmimage.kernel import parse_config
from vmimage.recipe import DEFAULT_RECIPE, load_recipe

KERNEL_DIR = DEFAULT_RECIPE.parent / "kernel"
GUEST_DIR = DEFAULT_RECIPE.parent / "guest"

# x86_64-only platform options and what the aarch64 fragment uses instead.
X86_ONLY = {"KERNEL_ZSTD", "PARAVIRT", "HYPERVISOR_GUEST", "KVM_GUEST", "PVH", "X86_X2APIC", "X86_TSC", "HPET_TIMER",
            "ACPI", "ACPI_BUTTON", "SERIAL_8250", "SERIAL_8250_CONSOLE", "SERIAL_8250_NR_UARTS",
            "SERIAL_8250_RUNTIME_UARTS", "RTC_DRV_CMOS", "SERIO"}  # SERIO: aarch64's kconfig selects it
# Set on both, differently: x86_64 has no keyboard, aarch64's power button is a gpio-keys one.
DIFFERS = {"INPUT_KEYBOARD"}
VIRT_PLATFORM = {"SERIAL_AMBA_PL011": "y", "SERIAL_AMBA_PL011_CONSOLE": "y", "PCI_HOST_GENERIC": "y",
                 "RTC_DRV_PL031": "y", "FW_CFG_SYSFS": "y", "GPIO_PL061": "y", "INPUT_KEYBOARD": "y",
                 "KEYBOARD_GPIO": "y", "INPUT_EVDEV": "y", "BINFMT_MISC": "y"}


# --- aarch64 kernel fragment and recipe ------------------------------------------------------


def test_aarch64_fragment_mirrors_x86_64_except_the_platform() -> None:
    x86 = parse_config((KERNEL_DIR / "x86_64.config").read_text())
    arm = parse_config((KERNEL_DIR / "aarch64.config").read_text())
    missing = {k: v for k, v in x86.items() if k.removeprefix("CONFIG_") not in X86_ONLY | DIFFERS and arm.get(k) != v}
    assert not missing, f"aarch64.config lacks what x86_64.config has: {missing}"
    assert not [k for k in arm if k.removeprefix("CONFIG_") in X86_ONLY]
    for option, value in VIRT_PLATFORM.items():
        assert arm.get(f"CONFIG_{option}") == value, option


def test_recipe_has_a_fragment_and_the_foreign_emulator_per_arch() -> None:
    recipe = load_recipe()
    assert recipe.kernel_config("aarch64").name == "aarch64.config"
    assert "usr/bin/qemu-aarch64" in recipe.include_for("x86_64")
    assert "usr/bin/qemu-x86_64" not in recipe.include_for("x86_64")
    assert "usr/bin/qemu-x86_64" in recipe.include_for("aarch64")
    assert set(recipe.include) < set(recipe.include_for("aarch64"))


def test_arch_include_rejects_unknown_architectures(tmp_path: Path) -> None:
    text = DEFAULT_RECIPE.read_text().replace('aarch64 = ["usr/bin/qemu-x86_64"]', 'riscv64 = ["x"]')
    (tmp_path / "guest").symlink_to(GUEST_DIR)
    (tmp_path / "image.toml").write_text(text)
    with pytest.raises(RecipeError, match="rootfs.arch_include.riscv64: unknown architecture"):
        load_recipe(tmp_path / "image.toml")


def test_powerbutton_accepts_acpi_and_gpio_keys() -> None:
    script = (GUEST_DIR / "powerbutton").read_text()
    assert '"Power Button"' in script and '"gpio-keys"' in script
    assert subprocess.run(["sh", "-n", str(GUEST_DIR / "powerbutton")]).returncode == 0


def test_boot_registers_the_emulators_with_fix_binary_only_when_present(tmp_path: Path) -> None:
    """Run the boot script's binfmt block against a fake binfmt_misc directory."""
    script = (GUEST_DIR / "boot").read_text()
    start = script.index("binfmt_register() {")
    end = script.index("\n\n", start)
    block = script[start:end].replace("/usr/bin/qemu-", f"{tmp_path}/bin/qemu-")
    (tmp_path / "bin").mkdir()
    emulator = tmp_path / "bin/qemu-aarch64"
    emulator.write_text("")
    emulator.chmod(0o755)
    binfmt = tmp_path / "binfmt"
    binfmt.mkdir()
    (binfmt / "register").write_text("")
    subprocess.run(["sh", "-c", f"binfmt={binfmt}\n{block}"], check=True)
    lines = (binfmt / "register").read_text().splitlines()
    assert len(lines) == 1, lines  # qemu-x86_64 is absent: not registered
    name, kind, _, magic, mask, interpreter, flags = lines[0].strip(":").split(":")
    assert (name, kind, interpreter, flags) == ("qemu-aarch64", "M", str(emulator), "F")
    raw = bytes(int(x, 16) for x in magic.split("\\x")[1:])
    assert raw[:4] == b"\x7fELF" and raw[18] == 0xB7  # EM_AARCH64
    assert len(raw) == len(mask.split("\\x")[1:]) == 20


# --- foreign guest architecture ----------------------------------------------------------------


def test_guest_arch_defaults_to_the_host_and_honours_pinnace_arch() -> None:
    assert guest_arch({}, machine="x86_64") == "x86_64"
    assert guest_arch({"PINNACE_ARCH": "arm64"}, machine="x86_64") == "aarch64"
    assert guest_arch({"PINNACE_ARCH": "aarch64"}, machine="AMD64") == "aarch64"
    with pytest.raises(SettingsError, match="PINNACE_ARCH"):
        guest_arch({"PINNACE_ARCH": "riscv64"})


def _no_probe(name: str) -> ProbeResult:
    raise AssertionError(f"a foreign guest must not probe {name}")


def test_foreign_guest_uses_tcg_without_probing() -> None:
    kvm = AccelFacts(kvm_usable=True)
    v = accel.choose("auto", "linux", {"tcg", "kvm"}, _no_probe, facts=kvm, guest_arch="aarch64", host_arch="x86_64")
    assert (v.accel, v.probed, v.fallback) == ("tcg", False, False)
    assert "aarch64 guest on a x86_64 host" in v.reason
    assert accel.choose("tcg", "darwin", {"tcg", "hvf"}, _no_probe, guest_arch="x86_64",
                        host_arch="aarch64").accel == "tcg"
    with pytest.raises(AcceleratorError, match="can only be emulated"):
        accel.choose("kvm", "linux", {"tcg", "kvm"}, _no_probe, guest_arch="aarch64", host_arch="x86_64")


def test_same_arch_guest_still_probes_hardware() -> None:
    seen = []

    def probe(name: str) -> ProbeResult:
        seen.append(name)
        return ProbeResult(True, 0.5, "ok")

    v = accel.choose("auto", "linux", {"tcg", "kvm"}, probe, facts=AccelFacts(kvm_usable=True),
                     guest_arch="x86_64", host_arch="x86_64")
    assert v.accel == "kvm" and seen == ["kvm"]


# --- Windows endpoints -------------------------------------------------------------------------


def test_windows_endpoints_are_named_pipes(tmp_path: Path) -> None:
    paths = Paths.for_instance("dev", {"PINNACE_HOME": str(tmp_path)})
    assert launcher.control_address(paths, "windows") == r"\\.\pipe\pinnace-dev-control"
    assert launcher.control_address(paths, "linux") == paths.control_socket
    assert launcher.docker_host(paths, "windows") == "npipe:////./pipe/pinnace-dev"
    assert launcher.docker_host(paths, "linux") == f"unix://{paths.docker_socket}"
    assert is_pipe(r"\\.\pipe\pinnace-dev-control")
    assert not is_pipe(paths.control_socket) and not is_pipe(str(paths.control_socket))
    assert dockerctx.env_lines("npipe:////./pipe/pinnace-dev", "powershell") == [
        '$Env:DOCKER_HOST = "npipe:////./pipe/pinnace-dev"']


def test_no_windows_module_is_imported_on_linux() -> None:
    code = ("import sys, hypervisor.agent, hypervisor.control, hypervisor.launcher, app.cli; "
            "bad = [m for m in ('_winapi', 'msvcrt', 'hypervisor.forward_windows') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stdout + result.stderr


class _Overlapped:
    def __init__(self, data: bytes, err: int, pending: bool) -> None:
        self.event, self._data, self._err, self.pending, self.cancelled = object(), data, err, pending, False

    def GetOverlappedResult(self, wait: bool):  # noqa: N802 - _winapi's name
        return len(self._data), self._err

    def getbuffer(self) -> bytes:
        return self._data

    def cancel(self) -> None:
        self.cancelled = True


class FakeWinapi:
    """Just enough of _winapi for PipeStream: scripted reads, recorded writes."""

    GENERIC_READ, GENERIC_WRITE, OPEN_EXISTING, FILE_FLAG_OVERLAPPED, NULL, INFINITE = 1, 2, 3, 4, 0, 0xFFFFFFFF

    def __init__(self, reads: list, busy: int = 0, wait_result: int = 0) -> None:
        self.reads, self.busy, self.wait_result = reads, busy, wait_result
        self.written, self.closed, self.waited, self.last = b"", False, 0, None

    def CreateFile(self, name, *args):  # noqa: N802, ANN001, ANN002
        if self.busy:
            self.busy -= 1
            err = OSError("busy")
            err.winerror = 231
            raise err
        return 42

    def WaitNamedPipe(self, name, ms):  # noqa: N802, ANN001
        self.waited += 1

    def WriteFile(self, handle, data, overlapped):  # noqa: N802, ANN001
        self.written += data
        return _Overlapped(data, 0, False), 0

    def ReadFile(self, handle, size, overlapped):  # noqa: N802, ANN001
        item = self.reads.pop(0)
        if isinstance(item, OSError):
            raise item
        data, err = item
        self.last = _Overlapped(data, 0 if err == 997 else err, err == 997)
        return self.last, err

    def WaitForMultipleObjects(self, handles, wait_all, ms):  # noqa: N802, ANN001
        return self.wait_result

    def CloseHandle(self, handle):  # noqa: N802, ANN001
        self.closed = True


def test_pipe_stream_reads_writes_and_sees_eof() -> None:
    broken = OSError("broken")
    broken.winerror = 109
    w = FakeWinapi([(b'{"ok":', 997), (b'true}\n', 234), broken], busy=2)
    with PipeStream.connect(r"\\.\pipe\x", timeout=1.0, winapi=w) as pipe:
        pipe.sendall(b'{"op":"status"}\n')
        assert pipe.recv(6) == b'{"ok":'  # pending, then completed
        assert pipe.recv(6) == b"true}\n"  # message mode: ERROR_MORE_DATA is a partial read
        assert pipe.recv(6) == b""  # server closed: EOF
    assert w.written == b'{"op":"status"}\n' and w.closed and w.waited == 2


def test_pipe_stream_times_out_and_cancels() -> None:
    w = FakeWinapi([(b"", 997)], wait_result=258)
    pipe = PipeStream.connect(r"\\.\pipe\x", timeout=0.1, winapi=w)
    with pytest.raises(TimeoutError):
        pipe.recv(10)
    assert w.last.cancelled


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="needs Windows: named pipes and the ProactorEventLoop")
@pytest.mark.timeout(60)
def test_control_api_over_a_named_pipe() -> None:
    """The agent's pipe server and ControlClient talk JSON lines, one connection per call."""
    import os
    import threading

    from hypervisor.control import ControlClient, encode
    from hypervisor.forward_windows import start_pipe_server

    name = rf"\\.\pipe\pinnace-test{os.getpid()}-control"
    loop = asyncio.ProactorEventLoop()  # type: ignore[attr-defined]
    ready = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(encode({"ok": True, "result": {"instance": "test", "state": "running"}}))
        await writer.drain()
        writer.close()

    async def serve() -> None:
        server = await start_pipe_server(handle, name)
        ready.set()
        await asyncio.sleep(30)
        server.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    client = ControlClient(name, timeout=5)
    assert client.status().state == "running"
    assert client.status().instance == "test"
    with pytest.raises(Exception, match="another agent"):
        asyncio.run(start_pipe_server(handle, name))
