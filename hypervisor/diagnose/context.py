"""What the checks share: the instance's paths, its status (asked of its agent, or its last words
when no agent answers: diagnose never starts or re-adopts anything), what earlier checks found
(QEMU, the image, whether the engine answers) and one SSH link to the guest, opened on first use."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypervisor import launcher
from hypervisor import platform as host_platform
from hypervisor import settings as settings_mod
from hypervisor.control import Status
from hypervisor.errors import ControlError, PinnaceError
from hypervisor.hostinfo import guest_arch
from hypervisor.paths import Paths
from hypervisor.platform import Platform
from hypervisor.qemu_binary import find_qemu_img

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5.0


@dataclass
class QemuFacts:
    path: Path
    version: str
    accelerators: frozenset[str]


@dataclass
class Context:
    paths: Paths
    env: Mapping[str, str]
    platform: Platform
    status: Status
    agent_answers: bool
    agent_problem: str = ""
    qemu: QemuFacts | None = None
    image: Any = None  # hypervisor.agent.guest_image.GuestImage once located
    engine_ok: bool = False
    engine_problem: str = ""
    memo: dict[str, Any] = field(default_factory=dict)  # results checks share (the probe container's)
    _guest: Any = None
    _guest_problem: str = ""

    @classmethod
    def gather(cls, paths: Paths, env: Mapping[str, str] | None = None) -> Context:
        env = os.environ if env is None else env
        try:
            status = launcher.client(paths, timeout=STATUS_TIMEOUT_S).status()
            return cls(paths, env, host_platform.current(), status, True)
        except ControlError as exc:
            return cls(paths, env, host_platform.current(), launcher.last_status(paths), False, str(exc))

    # --- the VM ------------------------------------------------------------------------------

    def vm_unavailable(self) -> str | None:
        """Why the checks that need the running VM cannot run, or None when they can."""
        if not self.agent_answers:
            return "the VM is not running" if self.status.state in ("stopped", "error") \
                else "the VM's agent is not answering"
        state = self.status.state
        if state == "running":
            return None
        if state == "paused":
            return f"the VM is paused ({self.status.reason})" if self.status.reason else "the VM is paused"
        if state in ("starting", "stopping"):
            return f"the VM is {state}"
        return "the VM is not running"

    def guest(self) -> Any:
        """A `guest.Guest` for the running VM; GuestUnavailable (with why) otherwise."""
        from hypervisor.diagnose.guest import Guest, GuestUnavailable, ssh_target

        if self._guest is not None:
            return self._guest
        if self._guest_problem:
            raise GuestUnavailable(self._guest_problem)
        reason = self.vm_unavailable()
        if reason is None and not self.status.ssh_port:
            reason = "the agent reports no SSH port for the guest"
        if reason is not None:
            self._guest_problem = reason
            raise GuestUnavailable(reason)
        try:
            self._guest = Guest(ssh_target(self.paths, int(self.status.ssh_port or 0)))
        except PinnaceError as exc:
            self._guest_problem = str(exc)
            raise
        return self._guest

    def engine_address(self) -> Path | str:
        return launcher.engine_address(self.paths)

    # --- the host ----------------------------------------------------------------------------

    def arch(self) -> str:
        return guest_arch(self.env)

    def qemu_img(self) -> Path:
        near = self.qemu.path if self.qemu is not None else None
        return find_qemu_img(self.platform.os_name, self.env, shutil.which, Path.is_file, near=near)

    def settings(self) -> settings_mod.Settings | None:
        """The instance's settings as written (not validated: a check reports, it does not refuse)."""
        if "settings" not in self.memo:
            try:
                self.memo["settings"] = settings_mod.load(self.paths.settings_file, settings_mod.HostFacts.detect(),
                                                          validated=False)
            except PinnaceError as exc:
                log.info("settings unreadable: %s", exc)
                self.memo["settings"] = None
        return self.memo["settings"]

    def close(self) -> None:
        if self._guest is not None:
            self._guest.close()
            self._guest = None
