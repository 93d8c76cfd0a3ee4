"""`pinnace diagnose`: checks of the host, the image and the VM, each with an outcome and a fix,
and the support bundle. The CLI and the tray's Troubleshoot window call these four:

    CheckResult   one check's key, title, outcome ("pass" | "warn" | "fail" | "skip"), detail, hint
    run_checks    every check in order, each result handed to `on_result` as it is known
    write_bundle  the scrubbed support archive (.tar.gz); progress lines to `on_progress`
    exit_code     0 when no check failed, else 1

Modules, one job each: context.py (what the checks share: status, SSH link), checks_host.py (no
VM needed), checks_vm.py (the running VM), routes.py (pure: Docker subnets vs host routes),
engine_api.py (engine calls with a body, the probe container), guest.py (bounded commands in the
guest), runner.py (order, exception safety), report.py (table, JSON), scrub.py (pure: secrets out),
bundle.py (collecting and writing the archive).
"""

from hypervisor.diagnose.bundle import write_bundle
from hypervisor.diagnose.result import CheckResult, exit_code
from hypervisor.diagnose.runner import run_checks

__all__ = ["CheckResult", "exit_code", "run_checks", "write_bundle"]
