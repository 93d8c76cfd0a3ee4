"""The guest clock (issue #14): hypervisor.guest_clock's pure logic, and the guest's `clock`
service and the agent's set command run by a real busybox sh on the host.

The busybox runs never touch the host's clock: `date` is a fake given by path where the script
allows it, and every run goes without CAP_SYS_TIME (setpriv drops it; the runner checks), so a
real `date -s` fails the way it would for a guest that may not set its clock.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hypervisor.guest_clock import (
    GUEST_TIME_COMMAND,
    ClockEvent,
    ClockOffset,
    ClockSample,
    WakeDetector,
    parse_guest_time,
    parse_offset,
    set_clock_command,
)
from vmimage.recipe import load_recipe
from vmimage.rootfs import inittab

ROOT = Path(__file__).resolve().parents[2]
CLOCK_SCRIPT = ROOT / "vmimage" / "guest" / "clock"
CAP_SYS_TIME = 25


# --- parsing the guest's time and offset -----------------------------------------------------


def test_parse_guest_time_reads_epochrealtime() -> None:
    assert parse_guest_time("1700000000.123456\n") == pytest.approx(1700000000.123456, abs=1e-6)
    assert parse_guest_time(b"1700000000.5\n") == 1700000000.5
    assert parse_guest_time("1700000000") == 1700000000.0
    # Only the last line counts (a login banner or a warning before it does not matter).
    assert parse_guest_time("note\n1700000001.000001\n\n") == pytest.approx(1700000001.000001, abs=1e-6)


@pytest.mark.parametrize("output", ["", "\n", "1700000000.%N", "$EPOCHREALTIME", "-5", "12:00:00", "1.2.3"])
def test_parse_guest_time_rejects_anything_else(output: str) -> None:
    # Empty: a shell without $EPOCHREALTIME; "%N": a date without nanoseconds.
    with pytest.raises(ValueError, match="not a guest time"):
        parse_guest_time(output)


def test_offset_is_against_the_round_trip_midpoint() -> None:
    offset = parse_offset("1000.250000\n", sent=1000.0, received=1000.2)
    assert offset.offset == pytest.approx(0.15)
    assert offset.uncertainty == pytest.approx(0.1)
    behind = parse_offset("400.0", sent=4000.0, received=4000.0)
    assert behind.offset == pytest.approx(-3600.0)
    assert behind.uncertainty == 0.0


def test_offset_needs_received_after_sent() -> None:
    with pytest.raises(ValueError, match="before sent"):
        parse_offset("1000.0", sent=1000.2, received=1000.0)


def test_offset_within_counts_the_uncertainty() -> None:
    assert ClockOffset(offset=0.3, uncertainty=0.1).within(0.5)
    assert not ClockOffset(offset=0.3, uncertainty=0.3).within(0.5)
    assert not ClockOffset(offset=-0.6, uncertainty=0.0).within(0.5)


def test_guest_time_command_needs_no_fork() -> None:
    assert GUEST_TIME_COMMAND == 'echo "$EPOCHREALTIME"'


# --- the set command -----------------------------------------------------------------------


def test_set_clock_sleeps_until_the_next_whole_second() -> None:
    plan = set_clock_command(1700000000.25)
    assert plan.target == 1700000001
    assert plan.delay == pytest.approx(0.75)
    assert plan.command == ('sleep 0.750000; r=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null); '
                            '[ -n "$r" ] && [ "$r" -gt 1700000003 ] && exit 4; '
                            'date -u -s @1700000001 >/dev/null; echo "$EPOCHREALTIME"')


def test_set_clock_counts_the_latency() -> None:
    plan = set_clock_command(1700000000.25, latency=0.9)
    assert plan.target == 1700000002
    assert plan.delay == pytest.approx(0.85)
    assert "sleep 0.850000;" in plan.command


@pytest.mark.parametrize("now", [1700000000.0, 1700000000.000001, 1700000000.999999, 1e9 + 0.5])
def test_set_clock_delay_is_within_one_second_and_lands_on_a_whole_second(now: float) -> None:
    plan = set_clock_command(now)
    assert 0.0 < plan.delay <= 1.0
    assert now + plan.delay == pytest.approx(plan.target, abs=1e-6)
    assert plan.target == math.floor(now) + 1


def test_set_clock_rejects_negative_latency() -> None:
    with pytest.raises(ValueError, match="latency"):
        set_clock_command(1700000000.0, latency=-0.1)


def test_took_effect_checks_the_clock_printed_after_setting() -> None:
    plan = set_clock_command(1700000000.25)
    assert plan.took_effect("1700000001.004000\n")
    assert not plan.took_effect("1700000000.999000\n")  # date -s refused: the clock is where it was
    assert not plan.took_effect("1699996401.004000\n")
    assert not plan.took_effect("")
    assert plan.took_effect(b"1700000001.300000", tolerance=0.5)


# --- noticing host sleep and wake ----------------------------------------------------------


def test_first_sample_reports_nothing() -> None:
    assert WakeDetector().observe(ClockSample(wall=100.0, steady=5.0)) is None


def test_steady_clocks_report_nothing() -> None:
    detector = WakeDetector(interval=5.0)
    for n in range(10):
        # NTP slewing: 0.5 ms/s at most.
        assert detector.observe(ClockSample(wall=1000.0 + 5.0025 * n, steady=50.0 + 5.0 * n, boot=60.0 + 5 * n)) is None


def test_suspend_seen_through_boottime() -> None:
    detector = WakeDetector()
    detector.observe(ClockSample(wall=1000.0, steady=50.0, boot=50.0))
    # Linux: CLOCK_MONOTONIC stopped for the hour asleep, CLOCK_BOOTTIME and the wall clock did not.
    event = detector.observe(ClockSample(wall=4605.0, steady=55.0, boot=3655.0))
    assert event == ClockEvent("suspend", pytest.approx(3600.0))


def test_suspend_seen_through_the_wall_clock_without_boottime() -> None:
    # macOS: time.monotonic() stops while asleep; there is no CLOCK_BOOTTIME.
    detector = WakeDetector()
    detector.observe(ClockSample(wall=1000.0, steady=50.0))
    event = detector.observe(ClockSample(wall=1665.0, steady=55.0))
    assert event is not None and event.kind == "wall-jump" and event.seconds == pytest.approx(660.0)


@pytest.mark.parametrize("step", [30.0, -3600.0])
def test_wall_clock_step_is_reported_both_ways(step: float) -> None:
    # The host's clock stepped (NTP after a wake, or by hand): the RTC follows it, the guest not.
    detector = WakeDetector()
    detector.observe(ClockSample(wall=1000.0, steady=50.0, boot=50.0))
    event = detector.observe(ClockSample(wall=1005.0 + step, steady=55.0, boot=55.0))
    assert event == ClockEvent("wall-jump", pytest.approx(step))


def test_stall_reported_when_the_steady_clock_counts_the_sleep() -> None:
    # Windows: time.monotonic() may count the time asleep, so only the long gap tells.
    detector = WakeDetector(interval=5.0)
    detector.observe(ClockSample(wall=1000.0, steady=50.0))
    event = detector.observe(ClockSample(wall=1900.0, steady=950.0))
    assert event == ClockEvent("stall", pytest.approx(895.0))
    assert WakeDetector().observe(ClockSample(wall=1900.0, steady=950.0)) is None  # no interval: no stall


def test_threshold_is_configurable_and_detector_keeps_going() -> None:
    detector = WakeDetector(threshold=0.5)
    detector.observe(ClockSample(wall=1000.0, steady=50.0))
    assert detector.observe(ClockSample(wall=1006.0, steady=55.0)) == ClockEvent("wall-jump", pytest.approx(1.0))
    # The next sample is compared with the last one, not with the first.
    assert detector.observe(ClockSample(wall=1011.0, steady=60.0)) is None


def test_sample_now_reads_the_host_clocks() -> None:
    a = ClockSample.now()
    b = ClockSample.now()
    assert b.steady >= a.steady
    assert abs(a.wall - time.time()) < 5
    if hasattr(time, "CLOCK_BOOTTIME"):
        assert a.boot is not None and b.boot is not None and b.boot >= a.boot
    assert WakeDetector(interval=1.0).observe(a) is None


# --- the image recipe ----------------------------------------------------------------------


def test_clock_service_is_in_the_image() -> None:
    recipe = load_recipe()
    guest = recipe.files["usr/lib/pinnace/clock"]
    assert guest.source == "clock"
    assert "/usr/lib/pinnace/clock" in recipe.respawn
    assert "::respawn:/usr/lib/pinnace/clock\n" in inittab(recipe)
    assert CLOCK_SCRIPT.read_text().startswith("#!/bin/sh\n")
    assert os.access(CLOCK_SCRIPT, os.X_OK)


# --- a real busybox sh on the host ---------------------------------------------------------


@pytest.fixture(scope="module")
def busybox(host_busybox: Path) -> Path:
    out = subprocess.run([str(host_busybox), "sh", "-c", 'echo "$EPOCHREALTIME"'], capture_output=True, text=True)
    if not re.fullmatch(r"\d+\.\d{6}\n", out.stdout):
        pytest.skip(f"{host_busybox}: its sh has no $EPOCHREALTIME (the guest's busybox 1.37 has)")
    return host_busybox


@pytest.fixture(scope="module")
def no_sys_time() -> list[str]:
    """A prefix that runs a command without CAP_SYS_TIME, checked: the host's clock stays as it is."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot keep the test from setting the host clock")
        prefix = ["setpriv", "--bounding-set", "-sys_time", "--inh-caps", "-sys_time", "--"]
    status = subprocess.run([*prefix, "cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout
    caps = {k: int(v, 16) for k, v in re.findall(r"^(CapEff|CapPrm|CapBnd):\s*([0-9a-f]+)$", status, re.M)}
    if len(caps) != 3 or any(v & (1 << CAP_SYS_TIME) for v in caps.values()):
        pytest.skip(f"cannot drop CAP_SYS_TIME for the busybox runs: {caps}")
    return prefix


class FakeRtc:
    """A since_epoch file that ticks with the host's wall clock plus `offset` seconds, like QEMU's
    PL031 (whose second edges are the host's)."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path, self.offset = path, offset
        self._stop = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{int(time.time()) + self.offset}\n")
        os.replace(tmp, self.path)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self._write()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def guest(tmp_path: Path, busybox: Path, no_sys_time: list[str]):  # noqa: ANN201 - a small helper object
    class Guest:
        rtc = tmp_path / "since_epoch"
        console = tmp_path / "console"
        date_log = tmp_path / "date.log"
        fake_date = tmp_path / "fakedate"
        ticking: FakeRtc | None = None

        def fake(self, body: str = "") -> None:
            # Logs its own clock and arguments; must not be named `date` (busybox sh runs applets
            # before anything in PATH, so only a path reaches a fake).
            self.fake_date.write_text(f'#!{busybox} sh\necho "$EPOCHREALTIME $*" >> {self.date_log}\n{body}\n')
            self.fake_date.chmod(0o755)

        def tick(self, offset: int) -> None:
            self.ticking = FakeRtc(self.rtc, offset)

        def env(self, **extra: str) -> dict[str, str]:
            return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PINNACE_RTC": str(self.rtc),
                    "PINNACE_CONSOLE": str(self.console), "PINNACE_DATE": str(self.fake_date), **extra}

        def once(self) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*no_sys_time, str(busybox), "sh", str(CLOCK_SCRIPT), "--once"], env=self.env(),
                                  capture_output=True, text=True, timeout=30)

        def console_lines(self) -> list[str]:
            return self.console.read_text().splitlines() if self.console.exists() else []

        def date_calls(self) -> list[tuple[float, str]]:
            if not self.date_log.exists():
                return []
            lines = self.date_log.read_text().splitlines()
            return [(float(t), args) for t, args in (line.split(" ", 1) for line in lines)]

    g = Guest()
    g.fake()
    yield g
    if g.ticking is not None:
        g.ticking.stop()


@pytest.mark.parametrize("offset", [3600, -3600, 5, -2])
def test_clock_script_steps_at_the_rtc_second_edge(guest, offset: int) -> None:  # noqa: ANN001
    guest.tick(offset)
    result = guest.once()
    assert result.returncode == 0, result.stderr
    calls = guest.date_calls()
    assert len(calls) == 1
    at, args = calls[0]
    match = re.fullmatch(r"-u -s @(\d+)", args)
    assert match, args
    # The RTC's new second, set just after the edge (the fake RTC's edges are the host's).
    assert int(match.group(1)) == math.floor(at) + offset
    assert at - math.floor(at) < 0.3, "set too long after the RTC's second edge"
    (line,) = guest.console_lines()
    step = re.fullmatch(r"pinnace: guest clock stepped by (-?\d+\.\d{3}) s from the RTC", line)
    assert step, line
    assert float(step.group(1)) == pytest.approx(offset, abs=1.0)


@pytest.mark.parametrize("offset", [0, 1])
def test_clock_script_leaves_a_clock_within_a_second_alone(guest, offset: int) -> None:  # noqa: ANN001
    guest.tick(offset)
    result = guest.once()
    assert result.returncode == 0, result.stderr
    assert guest.date_calls() == []
    assert guest.console_lines() == []


def test_clock_script_without_rtc_says_so(guest) -> None:  # noqa: ANN001
    result = guest.once()
    assert result.returncode == 1
    (line,) = guest.console_lines()
    assert line.startswith("pinnace: no RTC (")
    assert guest.date_calls() == []


def test_clock_script_does_not_trust_a_stopped_rtc(guest) -> None:  # noqa: ANN001
    guest.rtc.write_text(f"{int(time.time()) + 100}\n")
    result = guest.once()
    assert result.returncode == 1
    assert guest.console_lines() == [f"pinnace: the RTC ({guest.rtc}) is not ticking; guest clock left alone"]
    assert guest.date_calls() == []


def test_clock_script_reports_a_refused_set(guest) -> None:  # noqa: ANN001
    # busybox date exits 0 when the kernel refuses the time; only its stderr tells.
    guest.fake("echo \"date: can't set date: Operation not permitted\" >&2")
    guest.tick(3600)
    result = guest.once()
    assert result.returncode == 1
    (line,) = guest.console_lines()
    assert re.fullmatch(r"pinnace: cannot set the guest clock to @\d+: date: can't set date: Operation not permitted",
                        line), line


def test_clock_script_with_the_real_busybox_date_refused(guest, busybox: Path, no_sys_time: list[str]) -> None:  # noqa: ANN001
    # The applet itself, without CAP_SYS_TIME: what a guest that may not set its clock would see.
    guest.tick(3600)
    result = subprocess.run([*no_sys_time, str(busybox), "sh", str(CLOCK_SCRIPT), "--once"],
                            env=guest.env(PINNACE_DATE="date"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    (line,) = guest.console_lines()
    assert line.startswith("pinnace: cannot set the guest clock to @") and "can't set date" in line, line


def test_clock_script_loop_says_a_lasting_problem_once(guest, busybox: Path, no_sys_time: list[str]) -> None:  # noqa: ANN001
    guest.rtc.write_text("garbage\n")
    proc = subprocess.Popen([*no_sys_time, str(busybox), "sh", str(CLOCK_SCRIPT)],
                            env=guest.env(PINNACE_CLOCK_INTERVAL="0.1"), start_new_session=True)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "the loop exited"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    assert guest.console_lines() == [f"pinnace: cannot read the RTC ({guest.rtc})"]


def test_set_command_runs_in_busybox_sh(busybox: Path, no_sys_time: list[str]) -> None:
    # The real applets: fractional sleep, date -s (refused here: no CAP_SYS_TIME, and the host's
    # clock is already right), and $EPOCHREALTIME printed right after.
    plan = set_clock_command(time.time())
    result = subprocess.run([*no_sys_time, str(busybox), "sh", "-c", plan.command], capture_output=True, text=True,
                            timeout=10)
    assert result.returncode == 0
    assert "can't set date" in result.stderr
    after = parse_guest_time(result.stdout)
    assert plan.took_effect(result.stdout), (plan, after)
    assert after - plan.target < 0.2


def test_guest_time_command_runs_in_busybox_sh(busybox: Path) -> None:
    sent = time.time()
    result = subprocess.run([str(busybox), "sh", "-c", GUEST_TIME_COMMAND], capture_output=True, text=True,
                            timeout=10)
    received = time.time()
    offset = parse_offset(result.stdout, sent, received)
    assert offset.within(0.5), offset
