"""What one check found: its outcome, a line of detail and the fix; and the exit code of a run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
OUTCOMES = (PASS, WARN, FAIL, SKIP)


@dataclass(frozen=True)
class CheckResult:
    """One row of `pinnace diagnose`: what was checked (`title`), how it went (`outcome`: pass,
    warn, fail or skip), what was found (`detail`, one line) and what fixes it (`hint`, one line;
    empty when there is nothing to do)."""

    key: str
    title: str
    outcome: str
    detail: str
    hint: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """What a check function returns; the runner adds the check's key and title."""

    outcome: str
    detail: str
    hint: str = ""


def passed(detail: str, hint: str = "") -> Finding:
    return Finding(PASS, detail, hint)


def warned(detail: str, hint: str = "") -> Finding:
    return Finding(WARN, detail, hint)


def failed(detail: str, hint: str = "") -> Finding:
    return Finding(FAIL, detail, hint)


def skipped(detail: str, hint: str = "") -> Finding:
    return Finding(SKIP, detail, hint)


def exit_code(results: Iterable[CheckResult]) -> int:
    """0 when no check failed (warnings and skips included), else 1."""
    return 1 if any(r.outcome == FAIL for r in results) else 0


def one_line(text: object, limit: int = 300) -> str:
    """`text` on one line (its first non-empty line), cut to `limit` characters."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
