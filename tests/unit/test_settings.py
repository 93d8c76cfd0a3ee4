"""Settings: validation, TOML load/save round trip, CLI get/set."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from hypervisor.errors import SettingsError
from hypervisor.settings import (
    HostFacts,
    Settings,
    Share,
    get_value,
    load,
    save,
    set_value,
    to_toml,
    validate,
)

HOST = HostFacts(cpus=8, memory_mib=16384, os="linux")


def ok_settings(**kw) -> Settings:
    base = Settings(cpus=2, shares=[Share("/home/me")])
    for key, value in kw.items():
        setattr(base, key, value)
    return base


def test_defaults_are_sized_for_the_host() -> None:
    s = Settings.defaults(HostFacts(cpus=1, memory_mib=4096, os="linux"), home="/home/me")
    assert (s.cpus, s.memory_mib, s.disk_gib, s.accel) == (1, 2048, 64, "auto")
    assert (s.expose_ports_on_all_interfaces, s.start_at_login, s.start_vm_with_app) == (False, False, False)
    assert s.shares == [Share("/home/me", read_only=False)]
    assert Settings.defaults(HOST, home="/h").cpus == 2


def test_default_share_is_home() -> None:
    assert Settings().shares == [Share(str(Path.home()))]


def test_host_facts_detect_is_sane() -> None:
    facts = HostFacts.detect()
    assert facts.cpus >= 1 and facts.memory_mib >= 0
    assert facts.os in ("linux", "darwin", "windows")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpus": 0}, "cpus: 0"),
        ({"cpus": 9}, "cpus: 9"),
        ({"memory_mib": 511}, "memory_mib: 511"),
        ({"memory_mib": 16385}, "memory_mib: 16385"),
        ({"disk_gib": 3}, "disk_gib: 3"),
        ({"disk_gib": 2049}, "disk_gib: 2049"),
        ({"accel": "xen"}, "accel: 'xen'"),
        ({"shares": [Share("relative/dir")]}, "shares[0].path"),
        ({"share_transport": "nfs"}, "share_transport: 'nfs' is not one of auto, 9p, virtiofs"),
        ({"share_transport": "VirtioFS"}, "share_transport: 'VirtioFS'"),
    ],
)
def test_validate_rejects(changes: dict, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        validate(ok_settings(**changes), HOST)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"cpus": 1},
        {"cpus": 8},
        {"memory_mib": 512},
        {"memory_mib": 16384},
        {"disk_gib": 4},
        {"disk_gib": 2048},
    ],
)
def test_validate_accepts_bounds(changes: dict) -> None:
    validate(ok_settings(**changes), HOST)


@pytest.mark.parametrize("accel", ["auto", "kvm", "hvf", "whpx", "tcg"])
def test_validate_accepts_every_accel(accel: str) -> None:
    validate(ok_settings(accel=accel), HOST)


@pytest.mark.parametrize("transport", ["auto", "9p", "virtiofs"])
def test_validate_accepts_every_share_transport(transport: str) -> None:
    validate(ok_settings(share_transport=transport), HOST)


@pytest.mark.parametrize("host_os", ["darwin", "windows"])
def test_virtiofs_needs_a_linux_host(host_os: str) -> None:
    host = HostFacts(cpus=8, memory_mib=16384, os=host_os)
    with pytest.raises(SettingsError, match=f"share_transport: virtiofs needs a Linux host.*not {host_os}"):
        validate(ok_settings(share_transport="virtiofs"), host)
    validate(ok_settings(share_transport="auto"), host)
    validate(ok_settings(share_transport="9p"), host)


def test_share_transport_defaults_to_auto() -> None:
    assert Settings().share_transport == "auto" and Settings.defaults(HOST, home="/h").share_transport == "auto"


def test_windows_share_paths_are_absolute() -> None:
    validate(ok_settings(shares=[Share(r"C:\Users\me")]), HOST)


def test_disk_can_only_grow() -> None:
    with pytest.raises(SettingsError) as err:
        validate(ok_settings(disk_gib=8), HOST, current_disk_gib=64)
    assert str(err.value) == (
        "disk_gib: 8 is smaller than the existing data disk (64 GiB); disks can only grow"
    )
    validate(ok_settings(disk_gib=64), HOST, current_disk_gib=64)
    validate(ok_settings(disk_gib=100), HOST, current_disk_gib=64)


def test_unknown_host_memory_only_checks_lower_bound() -> None:
    validate(ok_settings(memory_mib=65536), HostFacts(cpus=8, memory_mib=0, os="linux"))


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    s = load(tmp_path / "nope.toml", HOST)
    assert s.cpus == 2 and s.memory_mib == 2048


def test_load_overlays_file_on_defaults(tmp_path: Path) -> None:
    f = tmp_path / "settings.toml"
    f.write_text('cpus = 4\naccel = "tcg"\n[[shares]]\npath = "/srv"\nread_only = true\n')
    s = load(f, HOST)
    assert (s.cpus, s.accel, s.memory_mib) == (4, "tcg", 2048)
    assert s.shares == [Share("/srv", True)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('cpus = "two"', "settings.toml: cpus: expected an integer, got 'two'"),
        ("cpus = true", "settings.toml: cpus: expected an integer, got true"),
        ("start_at_login = 1", "settings.toml: start_at_login: expected true or false, got 1"),
        ("accel = 3", "settings.toml: accel: expected a string, got 3"),
        ("colour = 1", "settings.toml: colour: unknown key"),
        ("cpus = 64", "settings.toml: cpus: 64 is outside 1..8"),
        ('accel = "xen"', "settings.toml: accel: 'xen' is not one of"),
        ('share_transport = "smb"', "settings.toml: share_transport: 'smb' is not one of"),
        ("share_transport = 9", "settings.toml: share_transport: expected a string, got 9"),
        ('shares = "x"', "settings.toml: shares: expected an array of tables"),
        ('[[shares]]\npath = "/a"\nmode = "rw"', "settings.toml: shares[0].mode: unknown key"),
        ("[[shares]]\nread_only = true", "settings.toml: shares[0].path: missing"),
        ("cpus = ", "settings.toml: not valid TOML"),
    ],
)
def test_load_errors_name_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "settings.toml"
    f.write_text(body + "\n")
    with pytest.raises(SettingsError) as err:
        load(f, HOST)
    text = str(err.value)
    assert message in text
    assert text.startswith(str(f))
    assert "\n" not in text


def test_load_checks_existing_disk(tmp_path: Path) -> None:
    f = tmp_path / "settings.toml"
    f.write_text("disk_gib = 8\n")
    with pytest.raises(SettingsError, match="disks can only grow"):
        load(f, HOST, current_disk_gib=64)


def test_save_round_trips_including_awkward_strings(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "settings.toml"
    s = ok_settings(
        cpus=3,
        accel="kvm",
        start_at_login=True,
        share_transport="9p",
        shares=[Share('/home/a "quoted"\\dir\tx\x7f', True), Share(r"C:\Users\me")],
    )
    save(f, s, HOST)
    assert load(f, HOST) == s
    assert tomllib.loads(f.read_text())["start_at_login"] is True


def test_save_empty_shares_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "settings.toml"
    save(f, ok_settings(shares=[]), HOST)
    assert load(f, HOST).shares == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_save_is_private_and_leaves_no_temp_files(tmp_path: Path) -> None:
    f = tmp_path / "settings.toml"
    save(f, ok_settings(), HOST)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["settings.toml"]


def test_save_refuses_invalid_and_keeps_file(tmp_path: Path) -> None:
    f = tmp_path / "settings.toml"
    save(f, ok_settings(cpus=2), HOST)
    before = f.read_bytes()
    with pytest.raises(SettingsError):
        save(f, ok_settings(cpus=99), HOST)
    with pytest.raises(SettingsError):
        save(f, ok_settings(accel="nope"))  # without host: static checks still apply
    assert f.read_bytes() == before


def test_to_toml_is_parseable() -> None:
    data = tomllib.loads(to_toml(ok_settings()))
    assert data["cpus"] == 2 and data["shares"] == [{"path": "/home/me", "read_only": False}]
    assert data["share_transport"] == "auto"


def test_file_without_share_transport_means_auto(tmp_path: Path) -> None:
    f = tmp_path / "settings.toml"
    f.write_text("cpus = 2\n")  # written before the key existed
    assert load(f, HOST).share_transport == "auto"
    f.write_text('share_transport = "9p"\n')
    assert load(f, HOST).share_transport == "9p"


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("cpus", "4", 4),
        ("memory_mib", " 4096 ", 4096),
        ("accel", "tcg", "tcg"),
        ("start_at_login", "true", True),
        ("start_at_login", "False", False),
        ("expose_ports_on_all_interfaces", "yes", True),
        ("shares", "/a,/b:ro", [Share("/a"), Share("/b", True)]),
        ("share_transport", " virtiofs ", "virtiofs"),
        ("share_transport", "9p", "9p"),
    ],
)
def test_set_value_parses_cli_text(key: str, text: str, expected: object) -> None:
    original = ok_settings()
    updated = set_value(original, key, text, HOST, is_dir=lambda _p: True)
    assert getattr(updated, key) == expected
    assert original.cpus == 2  # not mutated


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("cpus", "two", "cpus: expected an integer, got 'two'"),
        ("cpus", "1.5", "cpus: expected an integer"),
        ("start_at_login", "maybe", "start_at_login: expected true or false"),
        ("colour", "red", "colour: unknown key"),
        ("cpus", "99", "cpus: 99"),
        ("accel", "xen", "accel: 'xen'"),
        ("share_transport", "virtio-9p", "share_transport: 'virtio-9p' is not one of"),
    ],
)
def test_set_value_errors(key: str, text: str, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        set_value(ok_settings(), key, text, HOST)
    assert message in str(err.value)


def test_set_value_disk_cannot_shrink() -> None:
    with pytest.raises(SettingsError, match="disks can only grow"):
        set_value(ok_settings(), "disk_gib", "8", HOST, current_disk_gib=64)


@pytest.mark.parametrize(
    ("key", "expected"),
    [("cpus", "2"), ("accel", "auto"), ("start_at_login", "false"), ("shares", "/home/me"),
     ("share_transport", "auto")],
)
def test_get_value(key: str, expected: str) -> None:
    assert get_value(ok_settings(), key) == expected


def test_get_set_round_trip_for_every_key() -> None:
    s = ok_settings(shares=[Share("/x", True)], start_vm_with_app=True, share_transport="virtiofs")
    for key in ("cpus", "memory_mib", "disk_gib", "accel", "start_vm_with_app", "shares", "share_transport"):
        assert set_value(s, key, get_value(s, key), HOST, is_dir=lambda _p: True) == s


def test_get_value_unknown_key() -> None:
    with pytest.raises(SettingsError, match="nope: unknown key"):
        get_value(ok_settings(), "nope")


# --- shares the guest refuses, folders that do not exist -----------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/usr/local", "shares[0].path: '/usr/local' is under the VM's own /usr (its programs and libraries)"),
        ("/etc/docker", "shares[0].path: '/etc/docker' is under the VM's own /etc"),
        ("/var/lib/docker", "shares[0].path: '/var/lib/docker' is under the VM's own /var/lib"),
        ("/data", "shares[0].path: '/data' is the VM's own /data"),
        ("/tmp", "shares[0].path: '/tmp' is the VM's own /tmp"),
        ("/", "shares[0].path: '/' would hide the VM's own /bin"),
        ("/var", "shares[0].path: '/var' would hide the VM's own /var/lib"),
    ],
)
def test_validate_refuses_guest_system_paths(path: str, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        validate(ok_settings(shares=[Share(path)]), HOST)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("path", ["/home/u/src", "/tmp/x", "/Users/x", "/root", "/var/folders/xy/T", "/mnt/data"])
def test_validate_accepts_usual_host_folders(path: str) -> None:
    validate(ok_settings(shares=[Share(path)]), HOST)


def test_set_value_refuses_a_guest_system_path() -> None:
    with pytest.raises(SettingsError, match=r"shares\[1\]\.path: '/usr/local' is under the VM's own /usr"):
        set_value(ok_settings(), "shares", "/home/me,/usr/local:ro", HOST, is_dir=lambda _p: True)


def test_set_value_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SettingsError) as err:
        set_value(ok_settings(), "shares", f"{tmp_path},{missing}", HOST)
    assert str(err.value) == f"shares[1].path: '{missing}' does not exist on this host; create it first"
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(SettingsError, match="is not a directory on this host"):
        set_value(ok_settings(), "shares", str(file), HOST)
    assert set_value(ok_settings(), "shares", f"{tmp_path}:ro", HOST).shares == [Share(str(tmp_path), True)]


def test_only_setting_shares_checks_that_they_exist() -> None:
    with_missing = ok_settings(shares=[Share("/nonexistent/pinnace-share")])
    assert set_value(with_missing, "cpus", "3", HOST).cpus == 3
    assert set_value(with_missing, "shares", "", HOST).shares == []


def test_loading_a_hand_edited_guest_system_share_is_one_line_error(tmp_path: Path) -> None:
    f = tmp_path / "settings.toml"
    body = '[[shares]]\npath = "/home/me"\n\n[[shares]]\npath = "/usr/local"\n'
    f.write_text(body)
    with pytest.raises(SettingsError) as err:
        load(f, HOST)
    assert str(err.value) == (f"{f}: shares[1].path: '/usr/local' is under the VM's own /usr "
                              f"(its programs and libraries); share another folder")
    assert f.read_text() == body
    assert load(f, HOST, validated=False).shares == [Share("/home/me"), Share("/usr/local")]


def test_loading_a_share_that_does_not_exist_is_fine_until_start(tmp_path: Path) -> None:
    f = tmp_path / "settings.toml"
    f.write_text('[[shares]]\npath = "/nonexistent/pinnace-share"\n')
    assert load(f, HOST).shares == [Share("/nonexistent/pinnace-share")]  # mounts.plan refuses it at start


@pytest.mark.parametrize("home", ["/", "/var/lib/jenkins", "/usr/local/home", "/tmp"])
def test_a_home_the_guest_refuses_is_not_shared_by_default(home: str) -> None:
    assert Settings.defaults(HOST, home=home).shares == []


@pytest.mark.parametrize("home", ["/root", "/home/me", "/Users/me", "/var/root"])
def test_usual_homes_are_shared_by_default(home: str) -> None:
    defaults = Settings.defaults(HOST, home=home)
    assert defaults.shares == [Share(home)]
    validate(defaults, HOST)
