"""The checks in the order they run, from the host outwards (the first failure is usually the cause
of the later ones), and the loop that runs them: a check that raises is reported as failed with one
line, never as a traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from hypervisor.diagnose import checks_host, checks_vm
from hypervisor.diagnose.context import Context
from hypervisor.diagnose.result import FAIL, CheckResult, Finding, one_line
from hypervisor.paths import Paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    run: Callable[[Context], Finding]


CHECKS: tuple[Check, ...] = (
    Check("qemu", "QEMU installed", checks_host.check_qemu),
    Check("accel", "Accelerator", checks_host.check_accel),
    Check("image", "Guest image matches its manifest", checks_host.check_image),
    Check("disk_space", "Free space for the data disk", checks_host.check_disk_space),
    Check("data_disk", "Data disk (qcow2 check)", checks_host.check_disk_image),
    Check("processes", "Agent and QEMU match their records", checks_host.check_processes),
    Check("permissions", "Private dirs, keys and sockets", checks_host.check_permissions),
    Check("engine", "Engine answers /_ping", checks_vm.check_engine),
    Check("clock", "Guest clock", checks_vm.check_clock),
    Check("dns_guest", "DNS from the guest", checks_vm.check_dns_guest),
    Check("dns_container", "DNS from a container", checks_vm.check_dns_container),
    Check("host_docker_internal", "host.docker.internal in a container", checks_vm.check_host_alias),
    Check("networks", "Docker networks vs host routes", checks_vm.check_networks),
    Check("ports", "Published ports", checks_vm.check_ports),
    Check("shares", "Shared folders mounted", checks_vm.check_shares),
)


def run_one(check: Check, ctx: Context) -> CheckResult:
    try:
        found = check.run(ctx)
    except Exception as exc:  # noqa: BLE001 - one check's bug must not end the report
        log.warning("check %s raised", check.key, exc_info=True)
        found = Finding(FAIL, f"the check itself failed: {one_line(exc) or type(exc).__name__}",
                        "report this with `pinnace diagnose --bundle`")
    return CheckResult(check.key, check.title, found.outcome, one_line(found.detail, 1000), one_line(found.hint, 500))


def run_with(ctx: Context, on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    results = []
    try:
        for check in CHECKS:
            result = run_one(check, ctx)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        ctx.close()
    return results


def run_checks(paths: Paths, on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Every check, in order; `on_result` is called with each result as soon as it is known (from
    this thread). Nothing is started, stopped, re-adopted or repaired."""
    return run_with(Context.gather(paths), on_result)
