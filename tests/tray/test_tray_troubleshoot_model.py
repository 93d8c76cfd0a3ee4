"""What the Troubleshoot window shows for a run of hypervisor.diagnose's checks: rows, summary,
the bundle's default name and status lines (pure: no widgets, no diagnostics library)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.tray.troubleshoot_model import (
    COLOURS,
    bundle_dest,
    bundle_error_text,
    bundle_name,
    bundle_progress_text,
    bundle_saved_text,
    check_row,
    check_rows,
    checks_error_text,
    running_text,
    summary_level,
    summary_text,
)
from tests.tray.fakes import SAMPLE_CHECKS, FakeCheck

ROOT = Path(__file__).resolve().parents[2]


def test_rows_keep_the_library_order_with_coloured_marks() -> None:
    rows = check_rows(SAMPLE_CHECKS)
    assert [r.key for r in rows] == [c.key for c in SAMPLE_CHECKS]
    by_key = {r.key: r for r in rows}
    assert by_key["host.accel"].cells == (
        "Hardware acceleration", "✓ Passed", "KVM: /dev/kvm is readable and writable", "",
    )
    clock = by_key["clock"]
    assert clock.cells[1] == "! Warning" and clock.colour == COLOURS["warn"]
    assert clock.hint == "Corrected at the next resume; `pinnace restart` sets it now."
    assert by_key["docker.context"].cells[1] == "✗ Failed" and by_key["docker.context"].colour == COLOURS["fail"]
    assert by_key["ports"].cells[1] == "– Skipped" and by_key["ports"].colour == COLOURS["skip"]
    assert by_key["vm"].colour == COLOURS["pass"]


def test_row_for_an_unknown_outcome_and_untitled_check() -> None:
    row = check_row(FakeCheck("x.new", "", "timeout", " took too long \n", " "))
    assert row.cells == ("x.new", "? Timeout", "took too long", "")
    assert row.colour == COLOURS["skip"]


def _checks(*outcomes: str) -> list[FakeCheck]:
    return [FakeCheck(f"k{i}", f"Check {i}", o) for i, o in enumerate(outcomes)]


def test_summary_lines() -> None:
    assert summary_text(_checks(*["pass"] * 14)) == "All 14 checks passed"
    assert summary_text(_checks("pass")) == "The check passed"
    assert summary_text(_checks("pass", "skip", "pass", "skip")) == "All 2 checks passed (2 skipped)"
    assert summary_text(_checks("skip")) == "Every check was skipped"
    assert summary_text([]) == "No checks ran"
    assert summary_text(_checks("pass", "fail", "pass", "fail")) == "2 checks failed: Check 1, Check 3"
    assert summary_text(_checks("pass", "warn")) == "No check failed; 1 warning: Check 1"
    assert summary_text(SAMPLE_CHECKS) == "1 check failed: docker context; 1 warning: Guest clock"
    assert summary_text(_checks("pass", "odd")) == "No check failed; 1 check with no result: Check 1"


def test_summary_level_is_the_worst_outcome() -> None:
    assert summary_level(SAMPLE_CHECKS) == "fail"
    assert summary_level(_checks("pass", "warn", "skip")) == "warn"
    assert summary_level(_checks("pass", "skip")) == "pass"
    assert summary_level(_checks("skip")) == "skip"
    assert summary_level(_checks("pass", "odd")) == "warn"


def test_running_text() -> None:
    assert running_text(0) == "Running checks…"
    assert running_text(3) == "Running checks… 3 done"


def test_bundle_name_is_utc_and_safe_in_file_names() -> None:
    assert bundle_name("default", datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)) == (
        "pinnace-diagnose-default-20250304T050607Z.tar.gz"
    )
    cest = timezone(timedelta(hours=2))
    assert bundle_name("dev", datetime(2025, 3, 4, 1, 0, 0, tzinfo=cest)) == (
        "pinnace-diagnose-dev-20250303T230000Z.tar.gz"
    )
    assert ":" not in bundle_name("default")


def test_bundle_dest_from_the_save_dialog() -> None:
    assert bundle_dest("") is None
    assert bundle_dest("/tmp/out/report") == Path("/tmp/out/report.tar.gz")
    assert bundle_dest("/tmp/out/report.tar.gz") == Path("/tmp/out/report.tar.gz")
    assert bundle_dest("/tmp/out/report.tgz") == Path("/tmp/out/report.tgz")


def test_status_lines_are_one_line() -> None:
    assert bundle_progress_text("collecting the agent log") == "Saving the support bundle: collecting the agent log…"
    assert bundle_saved_text(Path("/d/b.tar.gz")) == "Support bundle saved: /d/b.tar.gz"
    err = OSError("No space left on device: '/d/b.tar.gz'\nTraceback: …")
    assert bundle_error_text(err) == "Could not save the support bundle: No space left on device: '/d/b.tar.gz'"
    assert bundle_error_text(RuntimeError()) == "Could not save the support bundle: RuntimeError"
    missing = ModuleNotFoundError("No module named 'hypervisor.diagnose'")
    assert checks_error_text(missing) == (
        "The checks could not run: the diagnostics are not available in this installation "
        "(No module named 'hypervisor.diagnose')"
    )


@pytest.mark.parametrize("module", ["app.tray.troubleshoot_model", "app.tray.troubleshoot", "app.tray.tray"])
def test_the_tray_imports_without_the_diagnostics_library(module: str) -> None:
    code = f"import sys; sys.modules['hypervisor.diagnose'] = None; import {module}"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stderr
