"""Settings form: the CLI's validator decides; errors land next to the right field."""

from __future__ import annotations

import dataclasses

from app.tray.settings_form import FormValues, accel_choices, check, error_key, restart_changes, restart_note
from hypervisor.settings import HostFacts, Settings, Share

HOST = HostFacts(cpus=4, memory_mib=8192, os="linux")
BASE = Settings(cpus=2, memory_mib=2048, disk_gib=64, shares=[Share("/home/u")])


def values(**changes: object) -> FormValues:
    return dataclasses.replace(FormValues.from_settings(BASE), **changes)  # type: ignore[arg-type]


def test_valid_form_keeps_fields_the_form_does_not_show() -> None:
    result = check(values(cpus=4, memory_mib=4096), BASE, HOST, 64)
    assert result.ok and result.errors == {}
    assert result.settings is not None
    assert result.settings.cpus == 4 and result.settings.shares == [Share("/home/u")]


def test_errors_come_from_the_shared_validator_and_name_the_field() -> None:
    too_many = check(values(cpus=5), BASE, HOST, 64)
    assert not too_many.ok
    assert too_many.errors == {"cpus": "cpus: 5 is outside 1..4 (the host has 4 CPUs)"}
    assert set(check(values(memory_mib=100), BASE, HOST, 64).errors) == {"memory_mib"}
    assert set(check(values(memory_mib=9000), BASE, HOST, 64).errors) == {"memory_mib"}
    shrink = check(values(disk_gib=32), BASE, HOST, 64)
    assert "disks can only grow" in shrink.errors["disk_gib"]
    assert check(values(disk_gib=32), BASE, HOST, None).ok  # no disk yet: any valid size
    assert set(check(values(accel="bogus"), BASE, HOST, 64).errors) == {"accel"}


def test_error_key_fallback() -> None:
    assert error_key("shares[0].path: 'x' is not an absolute path") == "form"


def test_accel_choices_per_host() -> None:
    assert [v for v, _ in accel_choices("linux")] == ["auto", "kvm", "tcg"]
    assert [v for v, _ in accel_choices("darwin")] == ["auto", "hvf", "tcg"]
    assert [v for v, _ in accel_choices("windows")] == ["auto", "whpx", "tcg"]
    assert [v for v, _ in accel_choices("freebsd")] == ["auto", "tcg"]


def test_restart_needed_only_for_vm_shape() -> None:
    new = dataclasses.replace(BASE, cpus=3, start_at_login=True)
    assert restart_changes(BASE, new) == ["cpus"]
    assert restart_note(["cpus", "memory_mib"]) == "Changing CPUs, memory takes effect after the VM restarts."
    assert restart_changes(BASE, dataclasses.replace(BASE, start_vm_with_app=True)) == []


def test_dialog_shows_inline_errors_and_blocks_save(qtbot) -> None:  # noqa: ANN001 - pytest-qt
    from app.tray.settings_dialog import SettingsDialog
    from tests.tray.helpers import running_status

    dialog = SettingsDialog(BASE, HOST, 64, running_status())
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.save_button.isEnabled()
    assert not dialog.restart_button.isVisible()
    assert "KVM: probe booted" in dialog.probe.text()

    dialog.cpus.setValue(9)
    assert not dialog.save_button.isEnabled()
    assert dialog.errors["cpus"].isVisible()
    assert "outside 1..4" in dialog.errors["cpus"].text()

    dialog.cpus.setValue(3)
    assert dialog.save_button.isEnabled() and not dialog.errors["cpus"].isVisible()
    assert dialog.restart_button.isVisible()
    assert "restarts" in dialog.note.text()

    dialog.disk.setValue(10)
    assert "can only grow" in dialog.errors["disk_gib"].text()
    dialog.disk.setValue(80)

    with qtbot.waitSignal(dialog.saved) as saved:
        dialog.restart_button.click()
    new, restart = saved.args
    assert restart is True and new.cpus == 3 and new.disk_gib == 80


def test_paused_vm_counts_as_running_for_restart_changes(qtbot) -> None:  # noqa: ANN001 - pytest-qt
    from app.tray.settings_dialog import SettingsDialog
    from tests.tray.helpers import running_status

    dialog = SettingsDialog(BASE, HOST, 64, running_status(state="paused", reason="paused (QEMU stopped the VM)"))
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.cpus.setValue(3)
    assert dialog.restart_button.isVisible() and "restarts" in dialog.note.text()
