"""installers/macos: the generated Info.plist, entitlements and LaunchAgent, and the frozen entry
script both platforms' builds start at. Pure: runs on any host."""

from __future__ import annotations

import json
import plistlib
import sys
import tomllib
from pathlib import Path

import pytest

from app import autostart
from hypervisor import launcher
from hypervisor.paths import Paths
from tests.installer_modules import load

ROOT = Path(__file__).resolve().parents[2]
MACOS = ROOT / "installers" / "macos"


recipe = load("pinnace_macos_recipe", MACOS / "recipe.py")
entry = load("pinnace_frozen_entry", MACOS / "frozen_entry.py")


def pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def generated_info_plist(**kwargs: object) -> dict[str, object]:
    """The plist as a reader sees it: serialised, then parsed."""
    return plistlib.loads(recipe.plist_bytes(recipe.info_plist(pyproject_version(), **kwargs)))


def test_info_plist_makes_a_menu_bar_app() -> None:
    plist = generated_info_plist()
    assert plist["LSUIElement"] is True
    # PyInstaller would set LSBackgroundOnly for a console EXE (the CLI); it must stay off.
    assert plist["LSBackgroundOnly"] is False
    assert plist["CFBundleIdentifier"] == "dev.pinnace.Pinnace"
    assert plist["CFBundleExecutable"] == "pinnace-tray" == entry.TRAY_NAME
    assert plist["CFBundlePackageType"] == "APPL"
    assert plist["CFBundleIconFile"] == "pinnace.icns"


def test_info_plist_version_comes_from_pyproject() -> None:
    plist = generated_info_plist()
    assert plist["CFBundleShortVersionString"] == recipe.bundle_version(pyproject_version())
    assert plist["CFBundleVersion"] == plist["CFBundleShortVersionString"]
    assert pyproject_version().startswith(str(plist["CFBundleShortVersionString"]))


def test_version_is_read_from_the_given_pyproject(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "pinnace"\nversion = "2.3.4rc1"\n')
    version = recipe.project_version(pyproject)
    assert version == "2.3.4rc1"
    # Apple wants at most three integers.
    assert recipe.info_plist(version)["CFBundleShortVersionString"] == "2.3.4"
    with pytest.raises(ValueError):
        recipe.bundle_version("dev")


def test_minimum_macos_follows_the_qt_wheel() -> None:
    tags = ["cp310-abi3-macosx_13_0_universal2", "cp310-abi3-macosx_14_0_arm64"]
    assert recipe.min_macos_from_wheel_tags(tags) == "14.0"
    assert recipe.min_macos_from_wheel_tags(["cp310-abi3-manylinux_2_34_x86_64"]) is None
    assert generated_info_plist(min_macos="14.0")["LSMinimumSystemVersion"] == "14.0"
    assert "LSMinimumSystemVersion" not in generated_info_plist()


def test_qemu_entitlements_grant_the_hypervisor() -> None:
    committed = (MACOS / "qemu.entitlements").read_bytes()
    entitlements = plistlib.loads(committed)
    assert entitlements["com.apple.security.hypervisor"] is True
    assert entitlements["com.apple.security.cs.allow-jit"] is True  # TCG under the hardened runtime
    assert set(entitlements) == {"com.apple.security.hypervisor", "com.apple.security.cs.allow-jit"}
    # The committed file is the generator's output, not a hand edit that drifted.
    assert committed == recipe.plist_bytes(recipe.qemu_entitlements())


def fake_bundle(tmp_path: Path) -> Path:
    app = tmp_path / "Pinnace.app"
    macos = app / "Contents" / "MacOS"
    macos.mkdir(parents=True)
    for name in (recipe.TRAY_EXE, recipe.CLI_EXE):
        (macos / name).write_bytes(b"")
    return app


@pytest.mark.parametrize("running", [recipe.TRAY_EXE, recipe.CLI_EXE])
def test_launch_agent_is_what_the_tray_toggle_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     running: str) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    app = fake_bundle(tmp_path)
    # Inside the frozen bundle sys.executable is one of its two programs.
    argv = autostart.tray_command(python=str(app / "Contents" / "MacOS" / running))
    assert recipe.launch_agent(str(app)) == autostart.launch_agent_plist(argv)

    agent = plistlib.loads(recipe.launch_agent(str(app)))
    assert agent["Label"] == autostart.launch_agent_label("default")
    assert agent["ProgramArguments"] == [f"{app}/Contents/MacOS/pinnace-tray"]
    assert agent["RunAtLoad"] is True
    home = tmp_path / "home"
    assert recipe.launch_agent_file_name() == autostart.Autostart("darwin", home).file.name


def test_installed_launch_agent_names_the_applications_copy() -> None:
    agent = plistlib.loads(recipe.launch_agent())
    assert agent["ProgramArguments"] == ["/Applications/Pinnace.app/Contents/MacOS/pinnace-tray"]


def test_iconset_has_every_size_iconutil_expects() -> None:
    sizes = recipe.iconset_sizes()
    assert len(sizes) == 10
    assert sizes["icon_16x16.png"] == 16
    assert sizes["icon_16x16@2x.png"] == 32
    assert sizes["icon_512x512@2x.png"] == 1024


def write_image(directory: Path, arch: str) -> None:
    directory.mkdir(parents=True)
    artifacts = {k: {"file": f, "sha256": "0", "size": 0} for k, f in
                 (("kernel", "vmlinuz"), ("initrd", "initrd.img"), ("rootfs", "rootfs.img"), ("cmdline", "cmdline"))}
    (directory / "manifest.json").write_text(json.dumps({"arch": arch, "artifacts": artifacts}))


def test_image_files_are_the_manifest_and_its_artifacts(tmp_path: Path) -> None:
    write_image(tmp_path / "aarch64", "aarch64")
    (tmp_path / "aarch64" / "kernel.config").write_text("# not needed to boot\n")
    assert recipe.image_files(tmp_path / "aarch64") == [
        "manifest.json", "cmdline", "initrd.img", "rootfs.img", "vmlinuz"]
    assert recipe.IMAGE_ARCHES == ("aarch64", "x86_64")


@pytest.mark.parametrize("spec", ["macos/pinnace.spec", "windows/pinnace.spec"])
def test_specs_are_valid_python(spec: str) -> None:
    path = ROOT / "installers" / spec
    compile(path.read_text(), str(path), "exec")


# --- the frozen entry script ----------------------------------------------------------------


def test_frozen_build_runs_the_agent_the_launcher_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = "/Applications/Pinnace.app/Contents/MacOS/pinnace-tray"
    monkeypatch.setattr(sys, "executable", frozen)
    paths = Paths.for_instance("dev", env={"PINNACE_HOME": str(tmp_path)}, host_os="darwin")
    argv = launcher.agent_argv(paths)
    assert entry.pick(argv[0], argv[1:]) == (entry._agent, ["--name", "dev"])


def test_frozen_build_runs_the_tray_from_the_module_fallback(tmp_path: Path) -> None:
    lone = tmp_path / "pinnace"  # no pinnace-tray beside it
    argv = autostart.tray_command(instance="dev", python=str(lone))
    assert argv[1:3] == ["-m", "app.tray_main"]
    assert entry.pick(argv[0], argv[1:]) == (entry._tray, ["--name", "dev"])


@pytest.mark.parametrize(("executable", "expected"), [
    ("/A/Pinnace.app/Contents/MacOS/pinnace-tray", "_tray"),
    ("/A/Pinnace.app/Contents/MacOS/pinnace", "_cli"),
    ("/Users/me/AppData/Local/Programs/Pinnace/pinnace-tray.exe", "_tray"),
    ("/Users/me/AppData/Local/Programs/Pinnace/pinnace.exe", "_cli"),
])
def test_frozen_build_picks_the_program_by_name(executable: str, expected: str) -> None:
    assert entry.pick(executable, ["status"]) == (getattr(entry, expected), ["status"])


def test_frozen_build_refuses_other_modules() -> None:
    with pytest.raises(SystemExit, match="not a module of this build"):
        entry.pick("/x/pinnace", ["-m", "pip", "install", "x"])
    with pytest.raises(SystemExit):
        entry.pick("/x/pinnace", ["-m"])
