"""Shared host folders: planning, QEMU argv (escaping), the fw_cfg text, the unshared-bind hint."""

from __future__ import annotations

import logging
from pathlib import Path

from hypervisor import mounts
from hypervisor.mounts import GuestShare
from hypervisor.settings import Share
from hypervisor.spec import MachineSpec, build_argv


def always_dir(_path: str) -> bool:
    return True


def test_plan_orders_parents_first_and_tags_in_order() -> None:
    planned = mounts.plan([Share("/home/ann/work", True), Share("/home/ann/"), Share("/opt/x")], "linux", always_dir)
    assert planned == [GuestShare("pinnace0", "/home/ann"), GuestShare("pinnace1", "/opt/x"),
                       GuestShare("pinnace2", "/home/ann/work", True)]


def test_plan_merges_duplicates_rw_wins() -> None:
    planned = mounts.plan([Share("/srv", True), Share("/srv/", False)], "darwin", always_dir)
    assert planned == [GuestShare("pinnace0", "/srv", False)]


def test_plan_skips_unusable_entries(caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.WARNING, "pinnace.mounts")
    shares = [Share("relative"), Share("/"), Share("/usr"), Share("/var/lib/docker"), Share("/proc/1"),
              Share("/tab\there"), Share("/missing"), Share("/ok")]
    planned = mounts.plan(shares, "linux", lambda p: p != "/missing")
    assert [s.path for s in planned] == ["/ok"]
    assert "not a directory" in caplog.text and "hide a directory" in caplog.text and "tab" in caplog.text


def test_plan_allows_paths_under_tmp_and_var() -> None:
    planned = mounts.plan([Share("/tmp/proj"), Share("/var/folders/xy/T")], "darwin", always_dir)
    assert [s.path for s in planned] == ["/tmp/proj", "/var/folders/xy/T"]


def test_windows_has_no_shares(caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.WARNING, "pinnace.mounts")
    assert mounts.plan([Share("C:\\Users\\ann")], "windows", always_dir) == []
    assert "cannot be shared on windows" in caplog.text


def test_share_argv_escapes_commas_keeps_spaces_and_unicode() -> None:
    argv = mounts.share_argv([GuestShare("pinnace0", "/home/ann/my, dir é"), GuestShare("pinnace1", "/ro", True)])
    assert argv == [
        "-fsdev", "local,id=fs0,path=/home/ann/my,, dir é,security_model=none",
        "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=pinnace0",
        "-fsdev", "local,id=fs1,path=/ro,security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=fs1,mount_tag=pinnace1",
    ]


def test_fw_cfg_text_round_trips() -> None:
    shares = [GuestShare("pinnace0", "/home/ann/a b, ü"), GuestShare("pinnace1", "/data/ro", True)]
    text = mounts.fw_cfg_text(shares)
    assert text == "pinnace0\t/home/ann/a b, ü\trw\npinnace1\t/data/ro\tro\n"
    assert mounts.parse_fw_cfg_text(text) == shares
    assert mounts.fw_cfg_text([]) == ""


def test_read_fw_cfg_missing_file(tmp_path: Path) -> None:
    assert mounts.read_fw_cfg(tmp_path / "nope") == []
    mounts.write_fw_cfg(tmp_path / "shares", [GuestShare("pinnace0", "/x")])
    assert mounts.read_fw_cfg(tmp_path / "shares") == [GuestShare("pinnace0", "/x")]


def test_covering_picks_deepest_and_respects_boundaries() -> None:
    shares = [GuestShare("p0", "/home/ann"), GuestShare("p1", "/home/ann/ro", True)]
    assert mounts.covering("/home/ann/ro/x", shares).tag == "p1"
    assert mounts.covering("/home/ann", shares).tag == "p0"
    assert mounts.covering("/home/anna/x", shares) is None


def test_unshared_binds_and_hint(caplog) -> None:  # noqa: ANN001
    inspect = {"Name": "/web", "Mounts": [
        {"Type": "bind", "Source": "/home/ann/src"},
        {"Type": "bind", "Source": "/etc/secret"},
        {"Type": "volume", "Source": "/var/lib/docker/volumes/v/_data"},
    ]}
    shares = [GuestShare("pinnace0", "/home/ann")]
    assert mounts.unshared_binds(inspect, shares) == ["/etc/secret"]
    caplog.set_level(logging.WARNING, "pinnace.mounts")
    mounts.BindHinter(shares)(inspect)
    assert "container web bind-mounts /etc/secret" in caplog.text and "pinnace config set shares" in caplog.text


def test_build_argv_places_share_devices() -> None:
    spec = MachineSpec(
        name="t", arch="x86_64", cpus=1, memory_mib=512, kernel=Path("/k"), initrd=Path("/i"),
        rootfs=Path("/r"), cmdline="quiet", data_disk=Path("/d"), ssh_host_port=2222,
        fw_cfg=(("opt/pinnace/shares", Path("/run/shares")),), serial_log=Path("/s"), qmp_socket=Path("/q"),
        pidfile=Path("/p"), shares=(GuestShare("pinnace0", "/home/a,b"),))
    argv = build_argv(Path("/qemu"), spec, "tcg", "linux")
    i = argv.index("-fsdev")
    assert argv[i:i + 4] == ["-fsdev", "local,id=fs0,path=/home/a,,b,security_model=none",
                             "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=pinnace0"]
    assert "name=opt/pinnace/shares,file=/run/shares" in argv
