"""Choosing the accelerator: hardware when it really boots our guest, TCG otherwise.

`auto` never fails: a hardware accelerator that fails its boot probe falls back to TCG with a
warning. An explicit request never falls back silently: it either works or raises.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hypervisor import platform as host_platform
from hypervisor.errors import AcceleratorError
from hypervisor.spec import PROBE_MARKER

log = logging.getLogger(__name__)

DISPLAY = {"kvm": "KVM", "hvf": "HVF", "whpx": "WHPX", "tcg": "TCG"}
HARDWARE = {"linux": "kvm", "darwin": "hvf", "windows": "whpx"}
FAILURE_TTL_S = 24 * 3600  # cached probe failures are retried after a day (e.g. after a BIOS fix)
SLOWDOWN = "roughly 10-50x slower"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    seconds: float
    reason: str


@dataclass(frozen=True)
class Verdict:
    accel: str
    reason: str
    probed: bool
    fallback: bool
    warning: str | None = None
    cached: bool = False


# --- host facts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccelFacts:
    """What the host says about hardware virtualisation, before any probe."""

    kvm_usable: bool = False
    hv_support: bool = False

    @classmethod
    def detect(cls, host_os: str) -> AccelFacts:
        if host_os == "linux":
            return cls(kvm_usable=os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK))
        if host_os == "darwin":
            return cls(hv_support=_sysctl("kern.hv_support") == "1")
        return cls()


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("sysctl %s failed: %s", name, exc)
        return ""


def candidate(host_os: str, facts: AccelFacts | None = None) -> str:
    """The accelerator `auto` should try first on this host."""
    facts = AccelFacts.detect(host_os) if facts is None else facts
    if host_os == "darwin" and facts.hv_support:
        return "hvf"
    if host_os == "windows":
        return "whpx"
    if host_os == "linux" and facts.kvm_usable:
        return "kvm"
    return "tcg"


def _facts_note(accel: str) -> str:
    return {
        "kvm": "/dev/kvm usable",
        "hvf": "kern.hv_support=1",
        "whpx": "Windows Hypervisor Platform",
    }.get(accel, "")


def _no_hardware_reason(host_os: str) -> str:
    detail = {
        "linux": " (/dev/kvm missing or not read-writable by you)",
        "darwin": " (kern.hv_support is not 1)",
    }.get(host_os, "")
    return f"TCG: no hardware accelerator on this host{detail}"


# --- probe cache -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeIdentity:
    """What a probe result depends on; a change in any part invalidates it."""

    hostname: str
    qemu_path: str
    qemu_version: str
    kernel_sha256: str

    def key(self, accel: str) -> str:
        return f"{self.hostname}|{self.qemu_path}|{self.qemu_version}|{self.kernel_sha256}|{accel}"


class ProbeCache:
    """Probe results in a small JSON file, so a boot probe runs once per host/QEMU/kernel."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock

    def load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable probe cache %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, include_failures: bool = True) -> ProbeResult | None:
        entry = self.load().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            result = ProbeResult(bool(entry["ok"]), float(entry["seconds"]), str(entry["reason"]))
            stored_at = float(entry.get("at", 0))
        except (KeyError, TypeError, ValueError):
            return None
        if not result.ok and (not include_failures or self._clock() - stored_at > FAILURE_TTL_S):
            return None
        return result

    def store(self, key: str, result: ProbeResult) -> None:
        data = self.load()
        data[key] = {**asdict(result), "at": self._clock()}
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            host_platform.current().private_dir(self.path.parent, tighten=False)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            # The cache is an optimisation: failing to write it only costs a probe next time.
            log.warning("cannot write probe cache %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)


# --- the decision ----------------------------------------------------------------------------

Probe = Callable[[str], ProbeResult]


def _probe(
    accel: str,
    probe: Probe,
    cache: ProbeCache | None,
    identity: ProbeIdentity | None,
    reuse_failures: bool,
) -> tuple[ProbeResult, bool]:
    """Probe `accel`, or reuse a cached result; returns (result, from_cache)."""
    key = identity.key(accel) if (cache is not None and identity is not None) else None
    if key is not None:
        cached = cache.get(key, include_failures=reuse_failures)
        if cached is not None:
            log.debug("probe cache hit for %s: %s", accel, cached)
            return cached, True
    log.info("probing %s with a throwaway VM", DISPLAY[accel])
    result = probe(accel)
    if key is not None:
        cache.store(key, result)
    return result, False


def _passed(accel: str, result: ProbeResult) -> str:
    note = _facts_note(accel)
    prefix = f"{note} and " if note else ""
    return f"{DISPLAY[accel]}: {prefix}boot probe passed in {result.seconds:.1f} s"


def choose(
    requested: str,
    host_os: str,
    available: set[str] | frozenset[str],
    probe: Probe,
    cache: ProbeCache | None = None,
    identity: ProbeIdentity | None = None,
    facts: AccelFacts | None = None,
    guest_arch: str | None = None,
    host_arch: str | None = None,
) -> Verdict:
    """Decide which accelerator to boot with; see the module docstring for the policy.

    A guest of another architecture than the host's (PINNACE_ARCH) can only be emulated: TCG.
    """
    if guest_arch and host_arch and guest_arch != host_arch:
        return _choose_foreign(requested, guest_arch, host_arch, available)
    if requested != "auto":
        return _choose_explicit(requested, available, probe, cache, identity)

    want = candidate(host_os, facts)
    if want == "tcg":
        return Verdict("tcg", _no_hardware_reason(host_os), probed=False, fallback=False)
    name = DISPLAY[want]
    if want not in available:
        warning = (
            f"this QEMU does not support {name}; falling back to TCG software emulation, which is {SLOWDOWN}"
        )
        return Verdict(
            "tcg", f"TCG: fallback, QEMU lacks {name}", probed=False, fallback=True, warning=warning
        )
    result, cached = _probe(want, probe, cache, identity, reuse_failures=True)
    if result.ok:
        return Verdict(want, _passed(want, result), probed=True, fallback=False, cached=cached)
    warning = (
        f"{name} failed its boot probe ({result.reason}); "
        f"falling back to TCG software emulation, which is {SLOWDOWN}"
    )
    log.warning("%s", warning)
    return Verdict(
        "tcg",
        f"TCG: fallback, {name} failed its boot probe ({result.reason})",
        probed=True,
        fallback=True,
        warning=warning,
        cached=cached,
    )


def _choose_foreign(requested: str, guest_arch: str, host_arch: str, available: set[str] | frozenset[str]) -> Verdict:
    if requested not in ("auto", "tcg"):
        raise AcceleratorError(
            f"accel {requested}: a {guest_arch} guest on a {host_arch} host can only be emulated (use auto or tcg)"
        )
    if "tcg" not in available:
        raise AcceleratorError("accel tcg: this QEMU does not support it, and a foreign-architecture guest needs it")
    return Verdict("tcg", f"TCG: {guest_arch} guest on a {host_arch} host (emulated, no hardware acceleration)",
                   probed=False, fallback=False)


def _choose_explicit(
    requested: str,
    available: set[str] | frozenset[str],
    probe: Probe,
    cache: ProbeCache | None,
    identity: ProbeIdentity | None,
) -> Verdict:
    if requested not in DISPLAY:
        raise AcceleratorError(
            f"accel {requested}: unknown accelerator (expected auto, kvm, hvf, whpx or tcg)"
        )
    if requested not in available:
        supported = ", ".join(sorted(available)) or "none"
        raise AcceleratorError(f"accel {requested}: this QEMU does not support it (supported: {supported})")
    if requested == "tcg":
        return Verdict("tcg", "TCG: requested in settings", probed=False, fallback=False)
    # The user asked for this one: always re-probe a failure rather than trusting an old one.
    result, cached = _probe(requested, probe, cache, identity, reuse_failures=False)
    if not result.ok:
        raise AcceleratorError(
            f"accel {requested}: {DISPLAY[requested]} failed its boot probe ({result.reason})"
        )
    return Verdict(requested, _passed(requested, result), probed=True, fallback=False, cached=cached)


# --- running a probe (impure) ----------------------------------------------------------------


def meaningful_error(stderr: str) -> str:
    """The line of QEMU's stderr that explains a failure, without the program-name prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    errors = [line for line in lines if "error" in line.lower() and "assertion" not in line.lower()]
    line = errors[-1] if errors else lines[-1]
    if line.startswith("qemu-system-") and ": " in line:
        line = line.split(": ", 1)[1]
    if line.lower().startswith("error: "):
        line = line[len("error: ") :]
    return line


# A hardware accelerator prints the kernel's first console line within milliseconds; one that
# says nothing for this long is hung (nested KVM without working VMX), not slow.
SILENT_HANG_S = 5.0


def run_probe(argv: list[str], timeout_s: float = 20, grace_s: float = 3,
              silent_s: float | None = None) -> ProbeResult:
    """Boot the probe VM; ok as soon as the guest prints PROBE_MARKER. Kills QEMU on timeout, or
    after `silent_s` without any console output (a hung accelerator is told from a slow one early).

    After the marker QEMU gets `grace_s` to exit by itself (the guest powers off) before it is killed.
    """
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        return ProbeResult(False, 0.0, f"cannot run {argv[0]}: {exc}")

    seen = threading.Event()
    got_output = threading.Event()
    stderr_chunks: list[bytes] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            got_output.set()
            if PROBE_MARKER.encode() in raw:
                seen.set()

    def read_stderr() -> None:
        assert proc.stderr is not None
        stderr_chunks.append(proc.stderr.read())

    readers = [threading.Thread(target=fn, daemon=True) for fn in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()

    deadline = start + timeout_s
    silent_deadline = start + silent_s if silent_s is not None else deadline
    while not seen.is_set() and proc.poll() is None and time.monotonic() < deadline:
        if not got_output.is_set() and time.monotonic() >= silent_deadline:
            break
        seen.wait(0.05)
    elapsed = time.monotonic() - start
    timed_out = proc.poll() is None and not seen.is_set()
    if proc.poll() is None and seen.is_set():
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for reader in readers:
        reader.join(timeout=2)

    if seen.is_set():
        return ProbeResult(True, round(elapsed, 2), "boot probe passed")
    stderr = b"".join(stderr_chunks).decode("utf-8", "replace")
    if timed_out:
        if got_output.is_set():
            return ProbeResult(False, elapsed, f"guest did not report ready within {timeout_s:g} s")
        waited = timeout_s if silent_s is None else min(silent_s, timeout_s)
        return ProbeResult(False, elapsed, f"no output after {waited:g} s (guest hung)")
    reason = (
        meaningful_error(stderr) or f"QEMU exited with status {proc.returncode} before the guest was ready"
    )
    return ProbeResult(False, elapsed, reason)
