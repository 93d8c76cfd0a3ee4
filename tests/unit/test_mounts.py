"""Shared host folders: planning, QEMU argv (escaping), the fw_cfg text, the unshared-bind hint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hypervisor import mounts
from hypervisor.errors import MachineError, SettingsError
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


# --- which folders can be shared -------------------------------------------------------------------

REFUSED_UNDER = sorted(mounts.GUEST_SYSTEM_PATHS)


@pytest.mark.parametrize("system", REFUSED_UNDER)
def test_every_guest_system_path_is_refused_at_and_under_it(system: str) -> None:
    assert mounts.guest_path_problem(system) == f"is the VM's own {system} ({mounts.GUEST_SYSTEM_PATHS[system]})"
    assert mounts.guest_path_problem(system + "/") is not None
    assert mounts.guest_path_problem(f"{system}/some/dir").startswith(f"is under the VM's own {system} (")


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/usr/local", "under the VM's own /usr"),
        ("/usr/local/src/proj", "under the VM's own /usr"),
        ("/etc/docker", "under the VM's own /etc"),
        ("/etc/ssh", "under the VM's own /etc"),
        ("/var/lib/docker", "under the VM's own /var/lib"),
        ("/var/lib/containerd", "under the VM's own /var/lib"),
        ("/var/run/docker", "under the VM's own /var/run"),
        ("/run/pinnace", "under the VM's own /run"),
        ("/proc/1", "under the VM's own /proc"),
        ("/mnt/rw/upper", "under the VM's own /mnt/rw"),
        ("/tmp", "the VM's own /tmp"),
        ("/tmp/", "the VM's own /tmp"),
        ("/home/../usr/local", "under the VM's own /usr"),  # judged where the guest mounts it
        ("//etc", "the VM's own /etc"),
    ],
)
def test_system_paths_named_in_the_reason(path: str, named: str) -> None:
    problem = mounts.guest_path_problem(path)
    assert problem is not None and named in problem, problem


@pytest.mark.parametrize(
    ("path", "hidden"),
    [("/", "/bin"), ("/var", "/var/lib"), ("/var/", "/var/lib"), ("/mnt", "/mnt/ro"), ("//", "/bin")],
)
def test_a_parent_of_a_system_path_is_refused(path: str, hidden: str) -> None:
    assert mounts.guest_path_problem(path).startswith(f"would hide the VM's own {hidden} (")


@pytest.mark.parametrize(
    "path",
    ["/home/u/src", "/home", "/tmp/x", "/tmp/pytest-of-root/pytest-1/test0", "/Users/x", "/Users",
     "/private/tmp", "/private/tmp/x", "/private/var/folders/xy/T", "/var/folders/xy/T", "/var/root",
     "/var/tmp", "/var/www/site", "/root", "/root/src", "/mnt/data", "/mnt/c", "/srv", "/opt", "/opt/x",
     "/media/usb", "/Volumes/External", "/usrx", "/etcetera", "/datastore", "/tmpfiles", "/mnt/rox",
     "/libexec-stuff", "/devel/proj", "/runner/work"],
)
def test_usual_host_folders_are_allowed(path: str) -> None:
    assert mounts.guest_path_problem(path) is None


def test_only_absolute_posix_paths_are_judged() -> None:
    assert mounts.guest_path_problem("usr/local") is None
    assert mounts.guest_path_problem(r"C:\Users\me") is None


@pytest.mark.parametrize(
    ("share", "message"),
    [
        (Share("relative"), "shared folder 'relative' is not an absolute POSIX path"),
        (Share("/"), "shared folder '/' would hide the VM's own /bin"),
        (Share("/usr/local"), "shared folder '/usr/local' is under the VM's own /usr"),
        (Share("/var/lib/docker"), "shared folder '/var/lib/docker' is under the VM's own /var/lib"),
        (Share("/proc/1"), "shared folder '/proc/1' is under the VM's own /proc"),
        (Share("/tmp"), "shared folder '/tmp' is the VM's own /tmp"),
        (Share("/tab\there"), "contains a tab, newline or NUL"),
    ],
)
def test_plan_refuses_unusable_entries(share: Share, message: str) -> None:
    with pytest.raises(mounts.ShareError) as err:
        mounts.plan([Share("/ok"), share], "linux", always_dir)
    assert message in str(err.value) and "pinnace config set shares" in str(err.value)
    assert "\n" not in str(err.value)


def test_plan_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(mounts.ShareError) as err:
        mounts.plan([Share(str(tmp_path)), Share(str(missing))], "linux")
    assert str(err.value) == (f"shared folder {missing} does not exist: create it or remove it with "
                              f"`pinnace config set shares ...`")
    assert isinstance(err.value, SettingsError)  # the CLI and the agent report it as one line


def test_plan_refuses_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(mounts.ShareError, match=f"shared folder {file} is not a directory"):
        mounts.plan([Share(str(file))], "darwin")


def test_plan_with_injected_checks() -> None:
    with pytest.raises(mounts.ShareError, match="/missing does not exist"):
        mounts.plan([Share("/ok"), Share("/missing")], "linux", lambda p: p != "/missing", exists=lambda p: False)
    with pytest.raises(mounts.ShareError, match="/missing is not a directory"):
        mounts.plan([Share("/missing")], "linux", lambda p: False, exists=lambda p: True)


def test_plan_allows_real_folders_under_tmp(tmp_path: Path) -> None:
    # pytest's tmp_path is under /tmp here, like the integration tests' shared folders
    assert [s.path for s in mounts.plan([Share(str(tmp_path))], "linux")] == [str(tmp_path)]


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


# --- transports ---------------------------------------------------------------------------------


def test_plan_sets_the_transport_on_every_share() -> None:
    planned = mounts.plan([Share("/a"), Share("/b", True)], "linux", always_dir, transport="virtiofs")
    assert planned == [GuestShare("pinnace0", "/a", False, "virtiofs"), GuestShare("pinnace1", "/b", True, "virtiofs")]
    assert {s.transport for s in mounts.plan([Share("/a")], "linux", always_dir)} == {"9p"}


def test_plan_rejects_an_unknown_transport() -> None:
    with pytest.raises(ValueError, match="nfs"):
        mounts.plan([Share("/a")], "linux", always_dir, transport="nfs")


@pytest.mark.parametrize(
    ("setting", "host_os", "problem", "expected"),
    [
        ("9p", "linux", None, "9p"),
        ("9p", "darwin", None, "9p"),
        ("virtiofs", "linux", None, "virtiofs"),
        ("auto", "linux", None, mounts.AUTO_LINUX),
        ("auto", "linux", "virtiofsd not found", "9p"),
        ("auto", "darwin", None, "9p"),
        ("auto", "windows", None, "9p"),
    ],
)
def test_choose_transport(setting: str, host_os: str, problem: str | None, expected: str) -> None:
    transport, why = mounts.choose_transport(setting, host_os, problem)
    assert transport == expected
    assert why
    if problem and setting == "auto" and mounts.AUTO_LINUX == "virtiofs":
        assert problem in why


def test_a_virtiofs_caveat_sends_auto_to_9p_and_is_named_when_asked_for() -> None:
    caveat = "this virtiofsd refuses shared writable mmap"
    assert mounts.choose_transport("auto", "linux", None, caveat) == ("9p", f"auto: 9p because {caveat}")
    transport, why = mounts.choose_transport("virtiofs", "linux", None, caveat)
    assert transport == "virtiofs" and caveat in why


def test_auto_picks_the_measured_winner_on_linux() -> None:
    # The figures behind it are in the module docstring (tests/benchmarks/bench_ports_mounts.py).
    assert mounts.AUTO_LINUX in mounts.TRANSPORTS
    assert f"auto picks {mounts.AUTO_LINUX}" in " ".join(mounts.__doc__.split())


@pytest.mark.parametrize(("host_os", "problem", "message"), [
    ("linux", "virtiofsd not found on PATH", "share_transport = virtiofs: virtiofsd not found on PATH"),
    ("darwin", None, "needs a Linux host"),
])
def test_explicit_virtiofs_that_cannot_work_raises(host_os: str, problem: str | None, message: str) -> None:
    with pytest.raises(MachineError, match=message):
        mounts.choose_transport("virtiofs", host_os, problem)


def test_share_argv_virtiofs_uses_a_socket_per_share() -> None:
    shares = [GuestShare("pinnace0", "/home/ann", False, "virtiofs"), GuestShare("pinnace1", "/ro", True, "virtiofs")]
    argv = mounts.share_argv(shares, Path("/run/user/1000/pinnace/a,b"))
    assert argv == [
        "-chardev", "socket,id=vfs0,path=/run/user/1000/pinnace/a,,b/vfs0.sock",
        "-device", "vhost-user-fs-pci,chardev=vfs0,tag=pinnace0",
        "-chardev", "socket,id=vfs1,path=/run/user/1000/pinnace/a,,b/vfs1.sock",
        "-device", "vhost-user-fs-pci,chardev=vfs1,tag=pinnace1",
    ]
    assert "-fsdev" not in argv and "readonly" not in " ".join(argv)  # read-only is virtiofsd's + the guest's


def test_share_argv_virtiofs_needs_a_socket_dir() -> None:
    with pytest.raises(ValueError, match="socket directory"):
        mounts.share_argv([GuestShare("pinnace0", "/a", False, "virtiofs")])


def test_socket_names_fit_where_the_engine_socket_does() -> None:
    for i in (0, 9, 10, 999):
        name = mounts.socket_name(GuestShare(f"pinnace{i}", "/x", False, "virtiofs"))
        assert name == f"vfs{i}.sock" and len(name) <= len("docker.sock")


def test_needs_shared_memory_only_for_virtiofs() -> None:
    assert not mounts.needs_shared_memory([GuestShare("pinnace0", "/a")])
    assert not mounts.needs_shared_memory([])
    assert mounts.needs_shared_memory([GuestShare("pinnace0", "/a"), GuestShare("pinnace1", "/b", False, "virtiofs")])


def test_fw_cfg_text_names_virtiofs_and_keeps_9p_lines_as_before() -> None:
    shares = [GuestShare("pinnace0", "/home/a b", False, "virtiofs"), GuestShare("pinnace1", "/ro", True, "virtiofs"),
              GuestShare("pinnace2", "/p9", True)]
    text = mounts.fw_cfg_text(shares)
    # A 9p line keeps three columns, so an image whose boot script predates virtiofs still reads "ro".
    assert text == "pinnace0\t/home/a b\trw\tvirtiofs\npinnace1\t/ro\tro\tvirtiofs\npinnace2\t/p9\tro\n"
    assert mounts.parse_fw_cfg_text(text) == shares


def test_parse_fw_cfg_text_skips_unknown_transports_and_junk() -> None:
    text = "pinnace0\t/a\trw\tnfs\npinnace1\t/b\trw\t9p\n\tno-tag\trw\njunk\npinnace2\t/c\tro\n"
    assert mounts.parse_fw_cfg_text(text) == [GuestShare("pinnace1", "/b"), GuestShare("pinnace2", "/c", True)]


def test_build_argv_with_virtiofs_shares_guest_memory() -> None:
    spec = MachineSpec(
        name="t", arch="x86_64", cpus=1, memory_mib=1536, kernel=Path("/k"), initrd=Path("/i"),
        rootfs=Path("/r"), cmdline="quiet", data_disk=Path("/d"), ssh_host_port=2222,
        fw_cfg=(), serial_log=Path("/s"), qmp_socket=Path("/q"), pidfile=Path("/p"),
        shares=(GuestShare("pinnace0", "/home/a", False, "virtiofs"),), share_socket_dir=Path("/run/x"))
    argv = build_argv(Path("/qemu"), spec, "tcg", "linux")
    assert argv[argv.index("-machine") + 1] == "q35,memory-backend=mem"
    i = argv.index("-object")
    assert argv[i + 1] == "memory-backend-memfd,id=mem,size=1536M,share=on"
    assert argv[argv.index("-m") + 1] == "1536"
    i = argv.index("-chardev")
    assert argv[i:i + 4] == ["-chardev", "socket,id=vfs0,path=/run/x/vfs0.sock",
                             "-device", "vhost-user-fs-pci,chardev=vfs0,tag=pinnace0"]


def test_build_argv_9p_only_keeps_private_memory() -> None:
    spec = MachineSpec(
        name="t", arch="x86_64", cpus=1, memory_mib=1536, kernel=Path("/k"), initrd=Path("/i"),
        rootfs=Path("/r"), cmdline="quiet", data_disk=Path("/d"), ssh_host_port=2222,
        fw_cfg=(), serial_log=Path("/s"), qmp_socket=Path("/q"), pidfile=Path("/p"),
        shares=(GuestShare("pinnace0", "/home/a"),), share_socket_dir=Path("/run/x"))
    argv = build_argv(Path("/qemu"), spec, "tcg", "linux")
    assert "-object" not in argv and "memory-backend" not in " ".join(argv)
    assert argv[argv.index("-machine") + 1] == "q35"
