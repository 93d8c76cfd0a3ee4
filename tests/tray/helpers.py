"""Small builders shared by the tray tests."""

from __future__ import annotations

from hypervisor.control import Status


def running_status(**overrides: object) -> Status:
    values: dict[str, object] = dict(
        instance="default",
        state="running",
        accel="kvm",
        accel_reason="KVM: probe booted in 0.4 s",
        cpus=2,
        memory_mib=4096,
        disk_gib=64,
        engine_version="26.1.3",
        docker_socket="/run/user/1000/pinnace/default/docker.sock",
    )
    values.update(overrides)
    return Status(**values)  # type: ignore[arg-type]
