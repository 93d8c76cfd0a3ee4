"""QEMU discovery with fake which/is_file per OS, and parsing of QEMU's own output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hypervisor.errors import QemuNotFoundError, QemuVersionError
from hypervisor.qemu_binary import (
    MIN_QEMU,
    QemuBinary,
    accelerators_from_help,
    check_version,
    find_firmware,
    find_qemu,
    find_qemu_img,
    parse_version,
)


def no_which(_name: str) -> str | None:
    return None


def files(*existing: str):
    present = {str(Path(p)) for p in existing}
    return lambda p: str(p) in present


def test_env_override_wins() -> None:
    found = find_qemu(
        "x86_64", "linux", {"PINNACE_QEMU": "/opt/q/qemu"}, lambda n: "/usr/bin/" + n, files("/opt/q/qemu")
    )
    assert found == Path("/opt/q/qemu")


def test_env_override_missing_file_is_an_error_naming_it() -> None:
    with pytest.raises(QemuNotFoundError, match="PINNACE_QEMU=/nope/qemu"):
        find_qemu("x86_64", "linux", {"PINNACE_QEMU": "/nope/qemu"}, lambda n: "/usr/bin/" + n, files())


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_path_lookup_uses_arch_binary(arch: str) -> None:
    asked: list[str] = []

    def which(name: str) -> str | None:
        asked.append(name)
        return f"/somewhere/{name}"

    assert find_qemu(arch, "linux", {}, which, files()) == Path(f"/somewhere/qemu-system-{arch}")
    assert asked == [f"qemu-system-{arch}"]


@pytest.mark.parametrize(
    ("host_os", "existing"),
    [
        ("darwin", "/opt/homebrew/bin/qemu-system-aarch64"),
        ("darwin", "/usr/local/bin/qemu-system-aarch64"),
        ("darwin", "/opt/local/bin/qemu-system-aarch64"),
        ("linux", "/usr/bin/qemu-system-aarch64"),
        ("linux", "/usr/libexec/qemu-system-aarch64"),
    ],
)
def test_per_os_fallback_locations(host_os: str, existing: str) -> None:
    assert str(find_qemu("aarch64", host_os, {}, no_which, files(existing))) == existing


def test_darwin_prefers_homebrew_arm_prefix() -> None:
    both = files("/opt/homebrew/bin/qemu-system-aarch64", "/usr/local/bin/qemu-system-aarch64")
    assert str(find_qemu("aarch64", "darwin", {}, no_which, both)) == "/opt/homebrew/bin/qemu-system-aarch64"


def test_windows_program_files() -> None:
    exe = r"C:\Program Files\qemu\qemu-system-x86_64.exe"
    assert str(find_qemu("x86_64", "windows", {}, no_which, files(exe))) == exe


def test_windows_program_files_from_env() -> None:
    exe = r"D:\Apps\qemu\qemu-system-x86_64.exe"
    env = {"ProgramFiles": r"D:\Apps"}
    assert str(find_qemu("x86_64", "windows", env, no_which, files(exe))) == exe


@pytest.mark.parametrize(
    ("host_os", "arch", "hint"),
    [
        ("linux", "x86_64", "sudo apt-get install qemu-system-x86 qemu-utils"),
        ("linux", "aarch64", "sudo apt-get install qemu-system-arm qemu-utils"),
        ("darwin", "aarch64", "brew install qemu"),
        ("windows", "x86_64", "winget install SoftwareFreedomConservancy.QEMU"),
    ],
)
def test_missing_qemu_says_how_to_install(host_os: str, arch: str, hint: str) -> None:
    with pytest.raises(QemuNotFoundError) as err:
        find_qemu(arch, host_os, {}, no_which, files())
    assert hint in str(err.value)
    assert f"qemu-system-{arch}" in str(err.value)


def test_unknown_arch() -> None:
    with pytest.raises(QemuNotFoundError, match="riscv64"):
        find_qemu("riscv64", "linux", {}, no_which, files())


def test_find_qemu_img_order() -> None:
    assert find_qemu_img("linux", {}, lambda n: "/p/" + n, files()) == Path("/p/qemu-img")
    assert find_qemu_img(
        "linux", {"PINNACE_QEMU_IMG": "/x/qemu-img"}, no_which, files("/x/qemu-img")
    ) == Path("/x/qemu-img")
    near = Path("/opt/q/bin/qemu-system-x86_64")
    assert find_qemu_img(
        "linux", {}, no_which, files("/opt/q/bin/qemu-img", "/usr/bin/qemu-img"), near=near
    ) == Path("/opt/q/bin/qemu-img")
    assert str(find_qemu_img("darwin", {}, no_which, files("/usr/local/bin/qemu-img"))) == (
        "/usr/local/bin/qemu-img"
    )
    exe = r"C:\Program Files\qemu\qemu-img.exe"
    assert str(find_qemu_img("windows", {}, no_which, files(exe))) == exe


def test_find_qemu_img_missing() -> None:
    with pytest.raises(QemuNotFoundError, match="qemu-img.*qemu-utils"):
        find_qemu_img("linux", {}, no_which, files())
    with pytest.raises(QemuNotFoundError, match="PINNACE_QEMU_IMG"):
        find_qemu_img("linux", {"PINNACE_QEMU_IMG": "/nope"}, no_which, files())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright ...", (7, 2, 19)),
        ("QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)", (8, 2, 2)),
        ("QEMU emulator version 9.1.0\n", (9, 1, 0)),
        ("QEMU emulator version 10.0\n", (10, 0, 0)),
        ("qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", (7, 2, 22)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "garbage", "QEMU emulator"])
def test_parse_version_garbage(text: str) -> None:
    with pytest.raises(QemuVersionError, match="cannot read the QEMU version"):
        parse_version(text)


def test_check_version() -> None:
    check_version(MIN_QEMU)
    check_version((8, 0, 0))
    with pytest.raises(QemuVersionError) as err:
        check_version((6, 2, 0))
    assert "6.2.0 is too old" in str(err.value) and "7.0.0" in str(err.value) and "tb-size" in str(err.value)


def test_accelerators_from_help() -> None:
    assert accelerators_from_help("Accelerators supported in QEMU binary:\ntcg\nkvm\n") == {"tcg", "kvm"}
    assert accelerators_from_help("Accelerators supported in QEMU binary:\r\ntcg\r\nwhpx\r\n") == {
        "tcg",
        "whpx",
    }
    assert accelerators_from_help("Accelerators supported in QEMU binary:\nhvf\ntcg\n") == {"hvf", "tcg"}
    assert accelerators_from_help("") == set()


def fake_runner(outputs: dict[str, str]):
    def run(argv: list[str]) -> str:
        return outputs[argv[1]]

    return run


def test_qemu_binary_probe_with_fake_runner() -> None:
    run = fake_runner(
        {
            "--version": "QEMU emulator version 7.2.19 (Debian)\n",
            "-accel": "Accelerators supported in QEMU binary:\ntcg\nkvm\n",
        }
    )
    qb = QemuBinary.probe(Path("/usr/bin/qemu-system-x86_64"), run=run)
    assert qb.version == (7, 2, 19) and qb.version_text == "7.2.19"
    assert qb.accelerators == {"tcg", "kvm"}


def test_qemu_binary_probe_too_old() -> None:
    run = fake_runner({"--version": "QEMU emulator version 6.2.0\n", "-accel": "tcg\n"})
    with pytest.raises(QemuVersionError):
        QemuBinary.probe(Path("/q"), run=run)


def test_qemu_binary_probe_cannot_run() -> None:
    def run(argv: list[str]) -> str:
        raise subprocess.TimeoutExpired(argv, 10)

    with pytest.raises(QemuNotFoundError, match="/q: cannot run it"):
        QemuBinary.probe(Path("/q"), run=run)


def test_qemu_binary_probe_missing_binary_for_real(tmp_path: Path) -> None:
    with pytest.raises(QemuNotFoundError, match="cannot run it"):
        QemuBinary.probe(tmp_path / "no-such-qemu")


@pytest.mark.parametrize(("host_os", "qemu", "expected"), [
    ("linux", "/usr/bin/qemu-system-x86_64", "/usr/share/qemu/qboot.rom"),
    ("darwin", "/opt/homebrew/bin/qemu-system-x86_64", "/opt/homebrew/share/qemu/qboot.rom"),
    ("windows", r"C:\Program Files\qemu\qemu-system-x86_64.exe", r"C:\Program Files\qemu\qboot.rom"),
])
def test_firmware_is_looked_up_in_the_qemu_install(host_os: str, qemu: str, expected: str) -> None:
    assert find_firmware(Path(qemu), "qboot.rom", host_os, files(expected)) == Path(expected)
    assert find_firmware(Path(qemu), "qboot.rom", host_os, files()) is None  # not shipped: QEMU's default


def test_firmware_follows_a_symlinked_binary(tmp_path: Path) -> None:
    cellar = tmp_path / "Cellar" / "qemu" / "9.2"
    (cellar / "bin").mkdir(parents=True)
    (cellar / "share" / "qemu").mkdir(parents=True)
    (cellar / "bin" / "qemu-system-x86_64").write_text("")
    (cellar / "share" / "qemu" / "qboot.rom").write_text("")
    (tmp_path / "bin").mkdir()
    link = tmp_path / "bin" / "qemu-system-x86_64"
    link.symlink_to(cellar / "bin" / "qemu-system-x86_64")
    assert find_firmware(link, "qboot.rom", "darwin") == cellar / "share" / "qemu" / "qboot.rom"
