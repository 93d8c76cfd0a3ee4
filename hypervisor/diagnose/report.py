"""The check results as a table for a terminal (row by row as they come) or as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

from hypervisor.diagnose.result import FAIL, OUTCOMES, CheckResult, exit_code

TITLE_WIDTH = 36
OUTCOME_WIDTH = 4
HINT_PREFIX = "fix: "


def header() -> str:
    return f"{'':{OUTCOME_WIDTH}}  {'check':{TITLE_WIDTH}}  detail"


def row(result: CheckResult) -> str:
    """`pass  QEMU installed  QEMU 8.2.2 at …`, and on a second line the hint when there is one."""
    title = result.title if len(result.title) <= TITLE_WIDTH else result.title[: TITLE_WIDTH - 1] + "…"
    line = f"{result.outcome:{OUTCOME_WIDTH}}  {title:{TITLE_WIDTH}}  {result.detail}".rstrip()
    if result.hint:
        line += f"\n{'':{OUTCOME_WIDTH}}  {'':{TITLE_WIDTH}}  {HINT_PREFIX}{result.hint}"
    return line


def counts(results: Sequence[CheckResult]) -> dict[str, int]:
    return {o: sum(1 for r in results if r.outcome == o) for o in OUTCOMES}


def summary(results: Sequence[CheckResult]) -> str:
    n = counts(results)
    failed = [r.title for r in results if r.outcome == FAIL]
    text = f"{n['pass']} passed, {n['warn']} warnings, {n['fail']} failed, {n['skip']} skipped"
    return f"{text}: {', '.join(failed)}" if failed else text


def table(results: Sequence[CheckResult]) -> str:
    return "\n".join([header(), *(row(r) for r in results), "", summary(results)])


def to_json(results: Sequence[CheckResult], instance: str = "") -> str:
    doc = {
        "instance": instance,
        "ok": exit_code(results) == 0,
        "summary": counts(results),
        "checks": [r.to_dict() for r in results],
    }
    return json.dumps(doc, indent=2)
