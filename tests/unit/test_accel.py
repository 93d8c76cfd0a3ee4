"""Accelerator choice with fake probes and a tmp probe cache; run_probe against fake QEMU scripts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from hypervisor.accel import (
    AccelFacts,
    ProbeCache,
    ProbeIdentity,
    ProbeResult,
    Verdict,
    candidate,
    choose,
    meaningful_error,
    run_probe,
)
from hypervisor.errors import AcceleratorError

OK = ProbeResult(True, 0.4, "boot probe passed")
MSR = ProbeResult(False, 1.2, "failed to set MSR 0x10a to 0x69")
IDENT = ProbeIdentity("host1", "/usr/bin/qemu-system-x86_64", "7.2.19", "abc123")
KVM_FACTS = AccelFacts(kvm_usable=True)


class FakeProbe:
    def __init__(self, result: ProbeResult) -> None:
        self.result = result
        self.calls: list[str] = []

    def __call__(self, accel: str) -> ProbeResult:
        self.calls.append(accel)
        return self.result


@pytest.mark.parametrize(
    ("host_os", "facts", "expected"),
    [
        ("linux", AccelFacts(kvm_usable=True), "kvm"),
        ("linux", AccelFacts(kvm_usable=False), "tcg"),
        ("darwin", AccelFacts(hv_support=True), "hvf"),
        ("darwin", AccelFacts(hv_support=False), "tcg"),
        ("windows", AccelFacts(), "whpx"),
        ("freebsd", AccelFacts(kvm_usable=True), "tcg"),
    ],
)
def test_candidate(host_os: str, facts: AccelFacts, expected: str) -> None:
    assert candidate(host_os, facts) == expected


def test_auto_kvm_probe_passes() -> None:
    probe = FakeProbe(OK)
    v = choose("auto", "linux", {"tcg", "kvm"}, probe, facts=KVM_FACTS)
    assert v == Verdict(
        "kvm",
        "KVM: /dev/kvm usable and boot probe passed in 0.4 s",
        probed=True,
        fallback=False,
        warning=None,
    )
    assert probe.calls == ["kvm"]


def test_auto_hvf_probe_passes() -> None:
    v = choose("auto", "darwin", {"tcg", "hvf"}, FakeProbe(OK), facts=AccelFacts(hv_support=True))
    assert v.accel == "hvf" and v.reason.startswith("HVF: kern.hv_support=1 and boot probe passed")


def test_auto_probe_failure_falls_back_to_tcg_with_warning() -> None:
    v = choose("auto", "linux", {"tcg", "kvm"}, FakeProbe(MSR), facts=KVM_FACTS)
    assert v.accel == "tcg" and v.fallback and v.probed
    assert v.warning == (
        "KVM failed its boot probe (failed to set MSR 0x10a to 0x69); "
        "falling back to TCG software emulation, which is roughly 10-50x slower"
    )


def test_auto_without_hardware_uses_tcg_without_probing() -> None:
    probe = FakeProbe(OK)
    v = choose("auto", "linux", {"tcg", "kvm"}, probe, facts=AccelFacts(kvm_usable=False))
    assert (v.accel, v.probed, v.fallback, v.warning) == ("tcg", False, False, None)
    assert v.reason.startswith("TCG: no hardware accelerator on this host")
    assert probe.calls == []


def test_auto_when_qemu_lacks_the_candidate_falls_back() -> None:
    probe = FakeProbe(OK)
    v = choose("auto", "windows", {"tcg"}, probe, facts=AccelFacts())
    assert v.accel == "tcg" and v.fallback and "does not support WHPX" in (v.warning or "")
    assert probe.calls == []


def test_explicit_unsupported_accel_raises() -> None:
    with pytest.raises(AcceleratorError) as err:
        choose("kvm", "linux", {"tcg"}, FakeProbe(OK))
    assert str(err.value) == "accel kvm: this QEMU does not support it (supported: tcg)"


def test_explicit_probe_failure_raises_without_fallback() -> None:
    with pytest.raises(AcceleratorError, match=r"accel kvm: KVM failed its boot probe \(failed to set MSR"):
        choose("kvm", "linux", {"tcg", "kvm"}, FakeProbe(MSR))


def test_explicit_kvm_ok() -> None:
    v = choose("kvm", "linux", {"tcg", "kvm"}, FakeProbe(OK))
    assert (v.accel, v.probed, v.fallback) == ("kvm", True, False)


def test_explicit_tcg_is_never_probed() -> None:
    probe = FakeProbe(MSR)
    v = choose("tcg", "linux", {"tcg", "kvm"}, probe)
    assert (v.accel, v.probed, v.fallback) == ("tcg", False, False)
    assert probe.calls == []


def test_unknown_request() -> None:
    with pytest.raises(AcceleratorError, match="accel xen: unknown"):
        choose("xen", "linux", {"tcg"}, FakeProbe(OK))


def test_cache_hit_skips_probe(tmp_path: Path) -> None:
    cache = ProbeCache(tmp_path / "accel-probe.json")
    first = FakeProbe(OK)
    v1 = choose("auto", "linux", {"tcg", "kvm"}, first, cache, IDENT, KVM_FACTS)
    second = FakeProbe(MSR)
    v2 = choose("auto", "linux", {"tcg", "kvm"}, second, cache, IDENT, KVM_FACTS)
    assert first.calls == ["kvm"] and second.calls == []
    assert v1.accel == v2.accel == "kvm" and not v1.cached and v2.cached


def test_cache_key_includes_every_identity_part(tmp_path: Path) -> None:
    cache = ProbeCache(tmp_path / "c.json")
    choose("auto", "linux", {"tcg", "kvm"}, FakeProbe(OK), cache, IDENT, KVM_FACTS)
    data = json.loads((tmp_path / "c.json").read_text())
    assert list(data) == ["host1|/usr/bin/qemu-system-x86_64|7.2.19|abc123|kvm"]
    other_kernel = ProbeIdentity("host1", "/usr/bin/qemu-system-x86_64", "7.2.19", "def456")
    probe = FakeProbe(OK)
    choose("auto", "linux", {"tcg", "kvm"}, probe, cache, other_kernel, KVM_FACTS)
    assert probe.calls == ["kvm"]


def test_cached_failure_used_by_auto_but_expires(tmp_path: Path) -> None:
    now = [1000.0]
    cache = ProbeCache(tmp_path / "c.json", clock=lambda: now[0])
    choose("auto", "linux", {"tcg", "kvm"}, FakeProbe(MSR), cache, IDENT, KVM_FACTS)
    probe = FakeProbe(OK)
    v = choose("auto", "linux", {"tcg", "kvm"}, probe, cache, IDENT, KVM_FACTS)
    assert v.accel == "tcg" and v.cached and probe.calls == []
    now[0] += 2 * 24 * 3600
    v = choose("auto", "linux", {"tcg", "kvm"}, probe, cache, IDENT, KVM_FACTS)
    assert v.accel == "kvm" and probe.calls == ["kvm"]


def test_explicit_request_reprobes_a_cached_failure(tmp_path: Path) -> None:
    cache = ProbeCache(tmp_path / "c.json")
    choose("auto", "linux", {"tcg", "kvm"}, FakeProbe(MSR), cache, IDENT, KVM_FACTS)
    probe = FakeProbe(OK)
    assert choose("kvm", "linux", {"tcg", "kvm"}, probe, cache, IDENT).accel == "kvm"
    assert probe.calls == ["kvm"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": "v"}', ""])
def test_corrupt_cache_is_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    cache = ProbeCache(path)
    assert cache.get("k") is None
    cache.store("k", OK)
    assert cache.get("k") == OK


def test_cache_store_and_load_round_trip(tmp_path: Path) -> None:
    cache = ProbeCache(tmp_path / "sub" / "c.json")
    cache.store("a", OK)
    cache.store("b", MSR)
    assert ProbeCache(tmp_path / "sub" / "c.json").get("a") == OK
    assert ProbeCache(tmp_path / "sub" / "c.json").get("b") == MSR
    assert ProbeCache(tmp_path / "sub" / "c.json").get("b", include_failures=False) is None


def test_meaningful_error_picks_the_error_line() -> None:
    stderr = (
        "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
        "qemu-system-x86_64: ../target/i386/kvm/kvm.c:2996: kvm_buf_set_msrs: Assertion `ret == n' failed.\n"
    )
    assert meaningful_error(stderr) == "failed to set MSR 0x10a to 0x69"
    assert meaningful_error("\n  \nqemu-system-aarch64: Could not access KVM kernel module\n") == (
        "Could not access KVM kernel module"
    )
    assert meaningful_error("") == ""


def fake_qemu(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_probe_ok_when_marker_seen() -> None:
    result = run_probe(fake_qemu("print('booting'); print('PINNACE-PROBE-OK', flush=True)"), timeout_s=10)
    assert result.ok and result.seconds < 10


def test_run_probe_ok_even_if_guest_does_not_power_off() -> None:
    start = time.monotonic()
    code = "import time; print('PINNACE-PROBE-OK', flush=True); time.sleep(60)"
    result = run_probe(fake_qemu(code), timeout_s=10, grace_s=0.2)
    assert result.ok
    assert time.monotonic() - start < 5


def test_run_probe_reports_qemu_error() -> None:
    code = (
        "import sys; sys.stderr.write('qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\\n'); "
        "sys.exit(1)"
    )
    result = run_probe(fake_qemu(code), timeout_s=10)
    assert not result.ok and result.reason == "failed to set MSR 0x10a to 0x69"


def test_run_probe_exit_without_output() -> None:
    result = run_probe(fake_qemu("import sys; sys.exit(3)"), timeout_s=10)
    assert not result.ok and "status 3" in result.reason


def test_run_probe_timeout_kills_hung_guest() -> None:
    start = time.monotonic()
    result = run_probe(fake_qemu("import time; time.sleep(60)"), timeout_s=0.5)
    assert not result.ok
    assert result.reason == "no output after 0.5 s (guest hung)"
    assert time.monotonic() - start < 5


def test_run_probe_timeout_with_output() -> None:
    result = run_probe(
        fake_qemu("import time; print('Linux version', flush=True); time.sleep(60)"), timeout_s=0.5
    )
    assert not result.ok and "did not report ready within 0.5 s" in result.reason


def test_run_probe_missing_binary(tmp_path: Path) -> None:
    result = run_probe([str(tmp_path / "nope")], timeout_s=1)
    assert not result.ok and "cannot run" in result.reason


def test_a_silent_accelerator_is_called_hung_early() -> None:
    start = time.monotonic()
    result = run_probe(fake_qemu("import time; time.sleep(60)"), timeout_s=20, silent_s=0.5)
    assert not result.ok and "guest hung" in result.reason
    assert time.monotonic() - start < 5


def test_a_slow_guest_that_talks_gets_the_whole_timeout() -> None:
    code = "import time; print('Linux version', flush=True); time.sleep(1.2); print('PINNACE-PROBE-OK', flush=True)"
    result = run_probe(fake_qemu(code), timeout_s=10, silent_s=0.5)
    assert result.ok, result.reason


def test_the_probe_kernel_is_not_quiet() -> None:
    from hypervisor.spec import probe_argv

    argv = probe_argv(Path("/usr/bin/qemu-system-x86_64"), "x86_64", "kvm", Path("/k"), Path("/i"), "linux")
    assert " quiet" not in argv[argv.index("-append") + 1]
