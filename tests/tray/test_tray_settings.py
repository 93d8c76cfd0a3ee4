"""Settings form: the CLI's validator decides; errors land next to the right field (and tab); the
new tabs (sharing, proxy, CA files, engine.json) load, validate and save."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import pytest

from app.tray import engine_form
from app.tray.settings_form import (
    FIELDS,
    FormValues,
    accel_choices,
    check,
    environment_proxy_note,
    error_index,
    error_key,
    host_additions_hint,
    restart_changes,
    restart_note,
    section_of,
    share_transport_choices,
)
from hypervisor import settings as settings_mod
from hypervisor.engine_config import ENGINE_FILE
from hypervisor.paths import Paths
from hypervisor.settings import HostFacts, Settings, Share

pytestmark = pytest.mark.timeout(60)

HOST = HostFacts(cpus=4, memory_mib=8192, os="linux")
SHARED = str(Path(__file__).resolve().parent)  # a folder that exists wherever the tests run
BASE = Settings(cpus=2, memory_mib=2048, disk_gib=64, shares=[Share(SHARED)])
NO_ENV: dict[str, str] = {}


def values(**changes: object) -> FormValues:
    return dataclasses.replace(FormValues.from_settings(BASE), **changes)  # type: ignore[arg-type]


def make_pem() -> str:
    """A real self-signed CA certificate, as a private registry's would be."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pinnace Test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pem_text() -> str:
    return make_pem()


@pytest.fixture
def ca_file(tmp_path: Path, pem_text: str) -> str:
    path = tmp_path / "registry-ca.pem"
    path.write_text(pem_text)
    return str(path)


@pytest.fixture
def not_pem(tmp_path: Path) -> str:
    path = tmp_path / "notes.txt"
    path.write_text("just some notes, no certificate here\n")
    return str(path)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths.for_instance("default", {"PINNACE_HOME": str(tmp_path / "home")})


# --- the pure form ---------------------------------------------------------------------------


def test_valid_form_keeps_fields_the_form_does_not_show() -> None:
    result = check(values(cpus=4, memory_mib=4096), BASE, HOST, 64)
    assert result.ok and result.errors == {}
    assert result.settings is not None
    assert result.settings.cpus == 4 and result.settings.shares == [Share(SHARED)]
    # Only the form's fields are replaced: every other Settings field comes from `base`.
    assert set(FIELDS) <= {f.name for f in dataclasses.fields(Settings)}


def test_form_values_round_trip_every_new_field(ca_file: str) -> None:
    full = dataclasses.replace(
        BASE, shares=[Share(SHARED, read_only=True)], share_transport="9p", expose_ports_on_all_interfaces=True,
        http_proxy="http://proxy:3128", https_proxy="http://proxy:3128", no_proxy="localhost,.corp",
        proxy_from_environment=False, ca_files=[ca_file], host_ca_additions=True)
    form = FormValues.from_settings(full)
    assert form.shares == (Share(SHARED, True),) and form.ca_files == (ca_file,)
    assert form.apply(BASE) == full
    assert check(form, BASE, HOST, 64).settings == full


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


def test_proxy_errors_name_the_field() -> None:
    bad = check(values(http_proxy="ftp://proxy.corp:21"), BASE, HOST, 64)
    assert set(bad.errors) == {"http_proxy"} and not bad.ok
    assert bad.errors["http_proxy"].startswith("http_proxy: 'ftp://proxy.corp:21' is not a proxy URL")
    port = check(values(https_proxy="http://proxy.corp:99999"), BASE, HOST, 64)
    assert port.errors == {"https_proxy": "https_proxy: 'http://proxy.corp:99999' has an invalid port"}
    assert set(check(values(no_proxy="localhost,\tcorp"), BASE, HOST, 64).errors) == {"no_proxy"}
    assert check(values(http_proxy="proxy.corp:3128", no_proxy="localhost, .corp"), BASE, HOST, 64).ok


def test_ca_files_must_be_pem_on_disk(ca_file: str, not_pem: str, tmp_path: Path) -> None:
    assert check(values(ca_files=(ca_file,)), BASE, HOST, 64).ok
    bad = check(values(ca_files=(ca_file, not_pem)), BASE, HOST, 64)
    assert bad.errors == {
        "ca_files": f"ca_files[1]: {not_pem!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"}
    missing = str(tmp_path / "gone.pem")
    assert "does not exist" in check(values(ca_files=(missing,)), BASE, HOST, 64).errors["ca_files"]
    relative = check(values(ca_files=("ca.pem",)), BASE, HOST, 64)
    assert relative.errors["ca_files"].startswith("ca_files[0]: 'ca.pem' is not an absolute path")


def test_missing_share_folder_and_guest_system_paths(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone")
    result = check(values(shares=(Share(gone),)), BASE, HOST, 64)
    assert result.errors == {"shares": f"shares[0].path: {gone!r} does not exist on this host; create it first"}
    assert check(values(shares=(Share("/x"),)), BASE, HOST, 64, is_dir=lambda p: p == "/x").ok
    system = check(values(shares=(Share("/var/lib"),)), BASE, HOST, 64, is_dir=lambda _p: True)
    assert set(system.errors) == {"shares"} and "VM's own" in system.errors["shares"]
    assert set(check(values(share_transport="virtiofs"), BASE, dataclasses.replace(HOST, os="darwin"),
                     64).errors) == {"share_transport"}


def test_several_errors_at_once_each_on_its_field(not_pem: str) -> None:
    result = check(values(cpus=9, ca_files=(not_pem,)), BASE, HOST, 64)
    assert set(result.errors) == {"cpus", "ca_files"}


def test_error_key_index_and_section() -> None:
    assert error_key("shares[0].path: 'x' is not an absolute path") == "shares"
    assert error_key("ca_files[2]: 'x' holds no PEM certificate") == "ca_files"
    assert error_key("http_proxy: 'x' is not a proxy URL") == "http_proxy"
    assert error_key("engine.json: 'registry-mirror' is not a dockerd setting") == "engine"
    assert error_key("frobnicate: what") == "form"
    assert error_index("ca_files[2]: 'x' holds no PEM certificate") == 2
    assert error_index("cpus: 9") is None
    assert section_of("https_proxy") == "Network" and section_of("ca_files") == "Certificates"
    assert section_of("engine") == "Engine" and section_of("form") is None


def test_choices_per_host() -> None:
    assert [v for v, _ in accel_choices("linux")] == ["auto", "kvm", "tcg"]
    assert [v for v, _ in accel_choices("darwin")] == ["auto", "hvf", "tcg"]
    assert [v for v, _ in accel_choices("windows")] == ["auto", "whpx", "tcg"]
    assert [v for v, _ in accel_choices("freebsd")] == ["auto", "tcg"]
    assert [v for v, _ in share_transport_choices("linux")] == ["auto", "virtiofs", "9p"]
    assert [v for v, _ in share_transport_choices("darwin")] == ["auto", "9p"]
    assert "/usr/local/share/ca-certificates" in host_additions_hint("linux")
    assert "System.keychain" in host_additions_hint("darwin")
    assert "Not read on windows" in host_additions_hint("windows")


def test_restart_needed_for_vm_shape_proxy_certificates_and_engine(ca_file: str) -> None:
    new = dataclasses.replace(BASE, cpus=3, start_at_login=True)
    assert restart_changes(BASE, new) == ["cpus"]
    assert restart_note(["cpus", "memory_mib"]) == "Changing CPUs, memory takes effect after the VM restarts."
    assert restart_changes(BASE, dataclasses.replace(BASE, start_vm_with_app=True)) == []
    proxy = dataclasses.replace(BASE, http_proxy="http://p:3128", ca_files=[ca_file])
    assert restart_changes(BASE, proxy) == ["http_proxy", "ca_files"]
    assert restart_changes(BASE, BASE, engine_changed=True) == ["engine"]
    assert restart_note(["http_proxy", "ca_files", "engine"]) == (
        "Changing HTTP proxy, CA certificates, engine settings takes effect after the VM restarts.")


def test_environment_proxy_note() -> None:
    env = {"HTTPS_PROXY": "http://envproxy:8080"}
    assert "http://envproxy:8080 (from the environment)" in environment_proxy_note(values(), env)
    assert environment_proxy_note(values(proxy_from_environment=False), env) == "No proxy."
    assert "(from the settings)" in environment_proxy_note(values(http_proxy="http://p:1"), env)
    assert "nor in the host's environment" in environment_proxy_note(values(), {})


# --- the pure engine form --------------------------------------------------------------------


def test_engine_text_checked_by_the_cli_parser() -> None:
    typo = engine_form.check('{"registry-mirror": ["https://mirror.corp"]}')
    assert not typo.ok
    assert typo.error == ("engine.json: 'registry-mirror' is not a dockerd setting "
                          "(did you mean 'registry-mirrors'?)")
    assert "managed by Pinnace" in engine_form.check('{"hosts": []}').error
    assert "not valid JSON" in engine_form.check('{"debug": tru').error
    good = engine_form.check('{"registry-mirrors": ["https://mirror.corp"], "debug": true}')
    assert good.ok and engine_form.status_line(good).startswith("OK: 2 settings")
    assert "Pinnace's defaults" in engine_form.status_line(engine_form.check(""))
    refused = engine_form.check('{"debug": true}', guest_refusal="invalid log level")
    assert refused.error == "engine.json: dockerd refuses it: invalid log level"


def test_engine_changes_are_judged_by_meaning() -> None:
    original = engine_form.check('{"debug": true}')
    assert not engine_form.changed(original, engine_form.check('{\n  "debug":   true\n}\n'))
    assert engine_form.changed(original, engine_form.check('{"debug": false}'))
    broken_on_disk = engine_form.check('{"registry-mirror": []}')
    assert not engine_form.blocks_save(broken_on_disk, broken_on_disk)  # as found: the last good one runs
    assert engine_form.blocks_save(broken_on_disk, engine_form.check('{"registry-mirro": []}'))
    assert engine_form.changed(broken_on_disk, engine_form.check("{}"))


def test_engine_merged_view_uses_the_forms_proxy() -> None:
    edit = engine_form.check('{"log-opts": {"max-size": "10m"}}')
    merged = json.loads(engine_form.merged_text(edit, values(http_proxy="http://127.0.0.1:3128"), NO_ENV))
    assert merged["log-opts"] == {"max-size": "10m"} and merged["storage-driver"] == "overlay2"
    assert merged["proxies"] == {"http-proxy": "http://10.0.2.2:3128"}  # the host's loopback, from the VM
    env_proxy = engine_form.merged_config(engine_form.check("{}"), values(), {"http_proxy": "http://e:1"})
    assert env_proxy["proxies"] == {"http-proxy": "http://e:1"}


def test_engine_file_load_and_save(tmp_path: Path) -> None:
    path = tmp_path / "config" / ENGINE_FILE
    assert engine_form.load(path).user == {} and engine_form.load(None).ok
    engine_form.save(path, engine_form.check('{"debug": true}'))
    assert json.loads(path.read_text()) == {"debug": True}
    assert path.stat().st_mode & 0o077 == 0
    assert engine_form.load(path).user == {"debug": True}
    with pytest.raises(settings_mod.SettingsError):
        engine_form.save(path, engine_form.check('{"nope": 1}'))


# --- the dialog ------------------------------------------------------------------------------


def open_dialog(qtbot, settings: Settings = BASE, status=None, **kwargs):  # noqa: ANN001, ANN201 - pytest-qt
    from app.tray.settings_dialog import SettingsDialog

    kwargs.setdefault("env", NO_ENV)
    dialog = SettingsDialog(settings, HOST, 64, status, **kwargs)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def tab_flagged(dialog, title: str) -> bool:  # noqa: ANN001
    return not dialog.tabs.tabIcon(dialog.tab_index[title]).isNull()


def test_dialog_shows_inline_errors_and_blocks_save(qtbot) -> None:  # noqa: ANN001 - pytest-qt
    from tests.tray.helpers import running_status

    dialog = open_dialog(qtbot, status=running_status())
    assert dialog.save_button.isEnabled()
    assert not dialog.restart_button.isVisible()
    assert "KVM: probe booted" in dialog.probe.text()

    dialog.cpus.setValue(9)
    assert not dialog.save_button.isEnabled()
    assert dialog.errors["cpus"].isVisible()
    assert "outside 1..4" in dialog.errors["cpus"].text()
    assert tab_flagged(dialog, "General") and not tab_flagged(dialog, "Network")

    dialog.cpus.setValue(3)
    assert dialog.save_button.isEnabled() and not dialog.errors["cpus"].isVisible()
    assert not tab_flagged(dialog, "General")
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
    from tests.tray.helpers import running_status

    dialog = open_dialog(qtbot, status=running_status(state="paused", reason="paused (QEMU stopped the VM)"))
    dialog.cpus.setValue(3)
    assert dialog.restart_button.isVisible() and "restarts" in dialog.note.text()


def write_sample_files(paths: Paths, ca_file: str, shared: Path) -> Settings:
    settings_mod.save(paths.settings_file, dataclasses.replace(
        BASE, shares=[Share(str(shared), read_only=True), Share(SHARED)], share_transport="9p",
        expose_ports_on_all_interfaces=True, http_proxy="http://proxy.corp:3128", no_proxy="localhost,.corp",
        proxy_from_environment=False, ca_files=[ca_file], host_ca_additions=True), HOST)
    (paths.config_dir / ENGINE_FILE).write_text('{"registry-mirrors": ["https://mirror.corp"]}\n')
    return settings_mod.load(paths.settings_file, HOST)


def test_dialog_loads_the_new_fields_from_the_files(qtbot, paths: Paths, ca_file: str,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    from PySide6.QtCore import Qt

    loaded = write_sample_files(paths, ca_file, tmp_path)
    dialog = open_dialog(qtbot, loaded, paths=paths)
    assert [dialog.tabs.tabText(i) for i in range(dialog.tabs.count())] == [
        "General", "Sharing && ports", "Network", "Certificates", "Engine"]  # "&&": a literal "&"
    assert dialog.shares.rowCount() == 2 and dialog.shares.item(0, 0).text() == str(tmp_path)
    assert dialog.shares.item(0, 1).checkState() == Qt.CheckState.Checked
    assert dialog.shares.item(1, 1).checkState() == Qt.CheckState.Unchecked
    assert dialog.share_transport.currentData() == "9p" and dialog.expose_ports.isChecked()
    assert dialog.http_proxy.text() == "http://proxy.corp:3128" and dialog.https_proxy.text() == ""
    assert dialog.no_proxy.text() == "localhost,.corp" and not dialog.proxy_from_env.isChecked()
    assert "http http://proxy.corp:3128" in dialog.proxy_note.text()
    assert [dialog.ca_files.item(i).text() for i in range(dialog.ca_files.count())] == [ca_file]
    assert dialog.host_ca.isChecked()
    assert json.loads(dialog.engine_text.toPlainText()) == {"registry-mirrors": ["https://mirror.corp"]}
    assert dialog.engine_status.text().startswith("OK: 1 setting ")
    assert dialog.save_button.isEnabled() and dialog.values() == FormValues.from_settings(loaded)
    assert not any(label.isVisible() for label in dialog.errors.values())


def test_dialog_invalid_proxy_is_named_and_blocks_save(qtbot) -> None:  # noqa: ANN001 - pytest-qt
    dialog = open_dialog(qtbot)
    dialog.tabs.setCurrentIndex(dialog.tab_index["Network"])
    dialog.https_proxy.setText("ftp://proxy.corp:21")
    label = dialog.errors["https_proxy"]
    assert label.isVisible() and label.text().startswith("https_proxy: 'ftp://proxy.corp:21' is not a proxy URL")
    assert not dialog.save_button.isEnabled() and tab_flagged(dialog, "Network")
    dialog.https_proxy.setText("http://proxy.corp:3128")
    assert not label.isVisible() and dialog.save_button.isEnabled()
    assert "https http://proxy.corp:3128 (from the settings)" in dialog.proxy_note.text()


def test_dialog_non_pem_ca_file_is_named_and_blocks_save(qtbot, ca_file: str, not_pem: str) -> None:  # noqa: ANN001
    dialog = open_dialog(qtbot, choose_ca_files=lambda: [ca_file, not_pem])
    dialog.tabs.setCurrentIndex(dialog.tab_index["Certificates"])
    dialog.add_ca_button.click()
    assert dialog.ca_files.count() == 2
    label = dialog.errors["ca_files"]
    assert label.isVisible() and f"ca_files[1]: {not_pem!r} holds no PEM certificate" in label.text()
    assert not dialog.save_button.isEnabled() and tab_flagged(dialog, "Certificates")
    assert dialog.ca_files.item(1).foreground().color().name() == "#c62828"  # the row it names
    assert not dialog.remove_ca_button.isEnabled()
    dialog.ca_files.item(1).setSelected(True)
    assert dialog.remove_ca_button.isEnabled()
    dialog.remove_ca_button.click()
    assert dialog.ca_files.count() == 1 and not label.isVisible() and dialog.save_button.isEnabled()


def test_dialog_missing_share_is_named_and_can_be_removed(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    gone = tmp_path / "gone"
    gone.mkdir()
    dialog = open_dialog(qtbot, choose_folder=lambda: str(gone))
    dialog.add_share_button.click()
    assert dialog.shares.rowCount() == 2 and dialog.save_button.isEnabled()
    gone.rmdir()
    dialog.revalidate()  # as any edit does
    assert f"shares[1].path: {str(gone)!r} does not exist" in dialog.errors["shares"].text()
    assert not dialog.save_button.isEnabled() and tab_flagged(dialog, "Sharing & ports")
    dialog.shares.selectRow(1)
    dialog.remove_share_button.click()
    assert dialog.shares.rowCount() == 1 and dialog.save_button.isEnabled()


def test_dialog_unknown_engine_key_is_named_and_blocks_save(qtbot, paths: Paths) -> None:  # noqa: ANN001
    dialog = open_dialog(qtbot, paths=paths)
    dialog.tabs.setCurrentIndex(dialog.tab_index["Engine"])
    dialog.engine_text.setPlainText('{"registry-mirror": ["https://mirror.corp"]}')
    label = dialog.errors["engine"]
    assert label.isVisible()
    assert label.text() == "engine.json: 'registry-mirror' is not a dockerd setting (did you mean 'registry-mirrors'?)"
    assert not dialog.engine_status.isVisible()
    assert not dialog.save_button.isEnabled() and tab_flagged(dialog, "Engine")
    dialog.engine_text.setPlainText('{"registry-mirrors": ["https://mirror.corp"]}')
    assert not label.isVisible() and dialog.save_button.isEnabled()
    assert dialog.engine_status.text().startswith("OK: 1 setting")
    dialog.show_merged.click()
    merged = json.loads(dialog.merged_view.toPlainText())
    assert merged["registry-mirrors"] == ["https://mirror.corp"] and merged["log-driver"] == "json-file"
    dialog.http_proxy.setText("http://proxy.corp:3128")  # the merged view follows the Network tab
    assert json.loads(dialog.merged_view.toPlainText())["proxies"] == {"http-proxy": "http://proxy.corp:3128"}
    dialog.engine_text.setPlainText('{"registry-mirrors": "x"}')
    assert "'registry-mirrors' must be a list of strings" in dialog.errors["engine"].text()
    assert not dialog.merged_view.isEnabled()  # greyed: not what the engine would get


def test_dialog_round_trip_saves_settings_and_engine_json(qtbot, paths: Paths, ca_file: str,  # noqa: ANN001
                                                          tmp_path: Path) -> None:
    from PySide6.QtCore import Qt

    from tests.tray.helpers import running_status

    first = open_dialog(qtbot, settings_mod.load(paths.settings_file, HOST), running_status(), paths=paths,
                        choose_folder=lambda: str(tmp_path), choose_ca_files=lambda: [ca_file])
    first.add_share_button.click()
    first.shares.item(first.shares.rowCount() - 1, 1).setCheckState(Qt.CheckState.Checked)
    first.share_transport.setCurrentIndex(first.share_transport.findData("9p"))
    first.expose_ports.setChecked(True)
    first.http_proxy.setText("http://proxy.corp:3128")
    first.https_proxy.setText("http://proxy.corp:3129")
    first.no_proxy.setText("localhost,.corp")
    first.proxy_from_env.setChecked(False)
    first.add_ca_button.click()
    first.host_ca.setChecked(True)
    first.engine_text.setPlainText('{"debug": true, "log-opts": {"max-size": "10m"}}')
    assert first.restart_button.isVisible() and "engine settings" in first.note.text()
    assert "HTTP proxy" in first.note.text() and "CA certificates" in first.note.text()
    expected = first.values()

    with qtbot.waitSignal(first.saved) as saved:
        first.save_button.click()
    new, restart = saved.args
    assert restart is False and first.engine_written
    settings_mod.save(paths.settings_file, new, HOST)  # what the tray's owner does with `saved`

    engine_file = paths.config_dir / ENGINE_FILE
    assert json.loads(engine_file.read_text()) == {"debug": True, "log-opts": {"max-size": "10m"}}
    reloaded = settings_mod.load(paths.settings_file, HOST)
    assert reloaded.shares[-1] == Share(str(tmp_path), read_only=True)
    assert reloaded.ca_files == [ca_file] and reloaded.http_proxy == "http://proxy.corp:3128"
    second = open_dialog(qtbot, reloaded, paths=paths)
    assert second.values() == expected
    assert json.loads(second.engine_text.toPlainText()) == {"debug": True, "log-opts": {"max-size": "10m"}}
    assert second.save_button.isEnabled() and not second.engine_changed()


def test_dialog_writes_engine_json_only_when_it_changed(qtbot, paths: Paths) -> None:  # noqa: ANN001
    engine_file = paths.config_dir / ENGINE_FILE
    dialog = open_dialog(qtbot, paths=paths)
    dialog.engine_text.setPlainText("{ }")  # no file yet, and nothing of the user's: no file either
    with qtbot.waitSignal(dialog.saved):
        dialog.save_button.click()
    assert not engine_file.exists() and not dialog.engine_written

    engine_file.parent.mkdir(parents=True, exist_ok=True)
    engine_file.write_text('{"debug":true}')
    dialog = open_dialog(qtbot, paths=paths)
    dialog.engine_text.setPlainText('{\n  "debug": true\n}\n')  # reformatted only
    with qtbot.waitSignal(dialog.saved):
        dialog.save_button.click()
    assert engine_file.read_text() == '{"debug":true}' and not dialog.engine_written


def test_dialog_refused_engine_json_on_disk_does_not_block_other_settings(qtbot, paths: Paths) -> None:  # noqa: ANN001
    engine_file = paths.config_dir / ENGINE_FILE
    engine_file.parent.mkdir(parents=True, exist_ok=True)
    engine_file.write_text('{"registry-mirror": []}')
    dialog = open_dialog(qtbot, paths=paths)
    assert "'registry-mirror' is not a dockerd setting" in dialog.errors["engine"].text()
    assert "unchanged" in dialog.errors["engine"].text() and dialog.save_button.isEnabled()
    dialog.engine_text.setPlainText('{"registry-mirrorz": []}')
    assert not dialog.save_button.isEnabled()
    dialog.engine_text.setPlainText('{"registry-mirrors": []}')
    with qtbot.waitSignal(dialog.saved):
        dialog.save_button.click()
    assert json.loads(engine_file.read_text()) == {"registry-mirrors": []}


def test_dialog_asks_the_running_engine_off_the_gui_thread(qtbot, paths: Paths) -> None:  # noqa: ANN001
    import threading

    from tests.tray.helpers import running_status

    asked: list[tuple[dict, str]] = []
    answers = iter(["invalid log level: loud", ""])

    def ask(config: dict) -> str | None:
        asked.append((config, threading.current_thread().name))
        return next(answers)

    dialog = open_dialog(qtbot, status=running_status(), paths=paths, ask_engine=ask)
    dialog.engine_text.setPlainText('{"log-level": "loud"}')
    assert dialog.ask_engine_button.isEnabled()
    with qtbot.waitSignal(dialog.engine_checked, timeout=10_000):
        dialog.ask_engine_button.click()
    assert asked[0][0]["log-level"] == "loud" and asked[0][1] != threading.main_thread().name
    assert dialog.errors["engine"].text() == "engine.json: dockerd refuses it: invalid log level: loud"
    assert not dialog.save_button.isEnabled()

    dialog.engine_text.setPlainText('{"log-level": "warn"}')  # a new text: the old refusal is gone
    assert dialog.save_button.isEnabled()
    with qtbot.waitSignal(dialog.engine_checked, timeout=10_000):
        dialog.ask_engine_button.click()
    assert dialog.engine_answer.text() == "The running engine accepts it."
    dialog.engine_text.setPlainText('{"log-level": "info"}')
    assert dialog.engine_answer.text() == ""  # the answer was about the text before

    stopped = open_dialog(qtbot, paths=paths, ask_engine=ask)  # no VM: nothing to ask
    assert not stopped.ask_engine_button.isEnabled()


def test_dialog_without_paths_shows_engine_json_read_only(qtbot) -> None:  # noqa: ANN001 - pytest-qt
    dialog = open_dialog(qtbot)
    assert dialog.engine_text.isReadOnly() and dialog.engine_file is None
    assert not dialog.ask_engine_button.isEnabled() and dialog.save_button.isEnabled()
