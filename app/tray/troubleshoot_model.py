"""What the Troubleshoot window shows for hypervisor.diagnose's check results: one row per check,
a summary line, the support bundle's default name and its status lines.

Free of Qt so the wording is unit-tested; the results are taken as any object with the fields of
hypervisor.diagnose.CheckResult, so this module imports without the diagnostics library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.tray.status_text import one_line

if TYPE_CHECKING:
    from hypervisor.paths import Paths

OUTCOMES = ("pass", "warn", "fail", "skip")
MARKS = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "–"}
LABELS = {"pass": "Passed", "warn": "Warning", "fail": "Failed", "skip": "Skipped"}
# Readable on light and dark palettes alike.
COLOURS = {"pass": "#1a7f37", "warn": "#b35c00", "fail": "#cf222e", "skip": "#6e7781"}
UNKNOWN_COLOUR = "#6e7781"
ERROR_LINE_MAX = 160


class CheckLike(Protocol):
    """The fields of hypervisor.diagnose.CheckResult that the window shows."""

    @property
    def key(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def hint(self) -> str: ...


# Shaped like hypervisor.diagnose's functions (called with keywords; tests pass fakes of this shape):
RunChecks = Callable[..., list[Any]]  # run_checks(paths, on_result=None) -> list[CheckResult]
WriteBundle = Callable[..., Path]  # write_bundle(paths, dest=None, on_progress=None) -> Path


@dataclass(frozen=True)
class CheckRow:
    """One table row: check | result (coloured mark and word) | detail | hint."""

    key: str
    title: str
    outcome: str
    result: str
    colour: str
    detail: str
    hint: str

    @property
    def cells(self) -> tuple[str, str, str, str]:
        return (self.title, self.result, self.detail, self.hint)


def check_row(result: CheckLike) -> CheckRow:
    outcome = result.outcome
    mark, label = MARKS.get(outcome, "?"), LABELS.get(outcome, outcome.capitalize() or "Unknown")
    return CheckRow(
        key=result.key,
        title=result.title or result.key,
        outcome=outcome,
        result=f"{mark} {label}",
        colour=COLOURS.get(outcome, UNKNOWN_COLOUR),
        detail=result.detail.strip(),
        hint=result.hint.strip(),
    )


def check_rows(results: Iterable[CheckLike]) -> list[CheckRow]:
    """In the library's order (it runs the checks from the host outwards, so the first failure is
    usually the cause of the later ones); the summary line names what failed."""
    return [check_row(r) for r in results]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_text(results: Sequence[CheckLike]) -> str:
    """"All 14 checks passed", "2 checks failed: SSH, Docker socket; 1 warning: Guest clock"."""
    if not results:
        return "No checks ran"
    by = {o: [r.title or r.key for r in results if r.outcome == o] for o in OUTCOMES}
    fails, warns, skips = by["fail"], by["warn"], by["skip"]
    other = [r.title or r.key for r in results if r.outcome not in OUTCOMES]
    parts = []
    if fails:
        parts.append(f"{_count(len(fails), 'check')} failed: {', '.join(fails)}")
    if warns:
        parts.append(f"{_count(len(warns), 'warning')}: {', '.join(warns)}")
    if other:
        parts.append(f"{_count(len(other), 'check')} with no result: {', '.join(other)}")
    if parts:
        text = "; ".join(parts)
        return text if fails else f"No check failed; {text}"
    passed = len(by["pass"])
    if not passed:
        return "Every check was skipped"
    text = "The check passed" if passed == 1 else f"All {passed} checks passed"
    return f"{text} ({len(skips)} skipped)" if skips else text


def summary_level(results: Sequence[CheckLike]) -> str:
    """The summary line's colour: the worst outcome ("pass" when nothing ran badly)."""
    outcomes = {r.outcome for r in results}
    if "fail" in outcomes:
        return "fail"
    if "warn" in outcomes or outcomes - set(OUTCOMES):
        return "warn"
    return "pass" if "pass" in outcomes else "skip"


def running_text(done: int) -> str:
    return "Running checks…" if done == 0 else f"Running checks… {done} done"


def error_text(what: str, exc: BaseException) -> str:
    """One line: `Could not save the support bundle: <first line of the error>`."""
    if isinstance(exc, ImportError):
        return f"{what}: the diagnostics are not available in this installation ({exc})"
    return f"{what}: {one_line(str(exc), ERROR_LINE_MAX) or type(exc).__name__}"


def checks_error_text(exc: BaseException) -> str:
    return error_text("The checks could not run", exc)


def checks_failed_text(line: str, done: int) -> str:
    """The run broke off: its one-line error, and how far it got."""
    return f"{line} (after {_count(done, 'check')})" if done else line


def bundle_error_text(exc: BaseException) -> str:
    return error_text("Could not save the support bundle", exc)


def bundle_progress_text(line: str) -> str:
    return f"Saving the support bundle: {one_line(line, ERROR_LINE_MAX)}…" if line.strip() else "Saving…"


def bundle_saved_text(path: Path | str) -> str:
    return f"Support bundle saved: {path}"


def bundle_name(instance: str, now: datetime | None = None) -> str:
    """pinnace-diagnose-<instance>-<UTC timestamp>.tar.gz, with no characters any OS refuses."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"pinnace-diagnose-{instance}-{stamp}.tar.gz"


def bundle_dest(chosen: str) -> Path | None:
    """The save dialog's answer as the bundle's path ("" is a cancel); `.tar.gz` added when no
    archive suffix was typed."""
    if not chosen.strip():
        return None
    path = Path(chosen)
    return path if path.name.endswith((".tar.gz", ".tgz")) else path.with_name(path.name + ".tar.gz")


def diagnose_api() -> tuple[RunChecks, WriteBundle]:
    """hypervisor.diagnose's two entry points, imported when first used (the tray starts without it;
    call this on a worker: the library's import may be slow). Tests replace this function."""
    from hypervisor.diagnose import run_checks, write_bundle

    return run_checks, write_bundle


def call_run_checks(paths: Paths, on_result: Callable[[Any], None] | None = None) -> list[Any]:
    run_checks, _ = diagnose_api()
    return list(run_checks(paths, on_result=on_result))


def call_write_bundle(
    paths: Paths, dest: Path | None = None, on_progress: Callable[[str], None] | None = None
) -> Path:
    _, write_bundle = diagnose_api()
    return Path(write_bundle(paths, dest=dest, on_progress=on_progress))
