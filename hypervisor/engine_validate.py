"""Asking the running guest's own dockerd whether it takes a configuration (`dockerd --validate`),
which catches what the host's checks cannot (a log driver's options, a runtime's path)."""

from __future__ import annotations

import base64
import logging

from hypervisor import engine_config, launcher
from hypervisor.diagnose.guest import ssh_target
from hypervisor.errors import PinnaceError
from hypervisor.paths import Paths
from hypervisor.ssh import GuestSSH, run_command

log = logging.getLogger("pinnace.engine")

GUEST_FILE = "/run/pinnace/validate.json"
REFUSAL_PREFIX = "unable to configure the Docker daemon with file"


def validate_command(text: str) -> str:
    """The guest command: the file through base64 (no quoting to get wrong), then dockerd's check."""
    encoded = base64.b64encode(text.encode()).decode()
    return (f"echo {encoded} | base64 -d > {GUEST_FILE} && "
            f"dockerd --validate --config-file {GUEST_FILE}; rc=$?; rm -f {GUEST_FILE}; exit $rc")


def refusal_reason(output: str) -> str:
    """dockerd's reason, without its "unable to configure … with file F:" preamble."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return "dockerd refused it"
    reason = next((line for line in lines if REFUSAL_PREFIX in line), lines[-1])
    if REFUSAL_PREFIX in reason:
        reason = reason.split(REFUSAL_PREFIX, 1)[1].split(":", 1)[-1].strip()
    return reason


def validate_in_guest(paths: Paths, config: dict) -> str | None:
    """'' when the running engine's dockerd accepts `config`, its reason when not, None when no VM
    runs to ask (the host's checks then stand alone)."""
    status = launcher.current_status(paths)
    if status.state != "running" or not status.ssh_port:
        return None
    try:
        with GuestSSH(ssh_target(paths, status.ssh_port)) as ssh:
            done = run_command(ssh, validate_command(engine_config.render(config)), timeout=90)
    except PinnaceError as exc:
        log.warning("cannot ask the guest's dockerd: %s", exc)
        return None
    if done.exit_status == 0:
        return ""
    return refusal_reason(done.stderr.decode(errors="replace") + "\n" + done.stdout.decode(errors="replace"))
