"""installers/windows: the generated Inno Setup script and icon. Pure: runs on any host (the
script is parsed here, not compiled; ISCC exists only on Windows)."""

from __future__ import annotations

import json
import re
import struct
import sys
import tomllib
from pathlib import Path

import pytest

from app import autostart
from hypervisor import qemu_binary
from tests.installer_modules import load

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = ROOT / "installers" / "windows"


recipe = load("pinnace_windows_recipe", WINDOWS / "recipe.py")
entry = load("pinnace_frozen_entry_w", ROOT / "installers" / "macos" / "frozen_entry.py")

IMAGE_DIR = r"C:\build\images\x86_64"
DIST_DIR = r"C:\build\dist\windows\Pinnace"


def write_image(directory: Path, arch: str = "x86_64") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    files = {"kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.img", "cmdline": "cmdline"}
    artifacts = {kind: {"file": name, "sha256": "0", "size": 0} for kind, name in files.items()}
    (directory / "manifest.json").write_text(json.dumps({"arch": arch, "artifacts": artifacts}))
    return directory


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> str:
    names = recipe.image_files(write_image(tmp_path_factory.mktemp("img") / "x86_64"))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return recipe.iss_script(version, DIST_DIR, IMAGE_DIR, names, r"C:\build\pinnace.ico", r"C:\build\dist")


def sections(text: str) -> dict[str, list[str]]:
    """Section name -> its lines (comments and blank lines dropped; [Code] kept whole)."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header and current != "Code":
            current = header.group(1)
            out[current] = []
        elif current == "Code" or (line.strip() and not line.startswith(";")):
            out.setdefault(current, []).append(line)
    return out


def setup(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sections(text)["Setup"])


def params(line: str) -> dict[str, str]:
    """`Name: "x"; Flags: a b` -> {"Name": "x", "Flags": "a b"} (Inno doubles quotes inside quotes)."""
    out = {}
    for match in re.finditer(r'(\w+):\s*("(?:[^"]|"")*"|[^;]*)(?:;\s*|$)', line):
        raw = match.group(2).strip()
        out[match.group(1)] = raw[1:-1].replace('""', '"') if raw.startswith('"') else raw
    return out


def entries(text: str, section: str) -> list[dict[str, str]]:
    return [params(line) for line in sections(text).get(section, [])]


def code(text: str) -> str:
    return "\n".join(sections(text)["Code"])


def test_installs_per_user_without_admin(script: str) -> None:
    s = setup(script)
    assert s["PrivilegesRequired"] == "lowest"
    assert "PrivilegesRequiredOverridesAllowed" not in s  # no "install for all users" escape hatch
    assert s["DefaultDirName"] == r"{userpf}\Pinnace"  # %LOCALAPPDATA%\Programs\Pinnace
    assert s["AppId"].startswith("{{")  # Inno's escaped brace: a literal GUID, not a constant


def test_version_comes_from_pyproject(script: str, tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    s = setup(script)
    assert s["AppVersion"] == version
    assert s["OutputBaseFilename"] == f"Pinnace-{version}-x86_64-setup"
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", s["VersionInfoVersion"])
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nversion = "1.2rc3"\n')
    assert recipe.project_version(pyproject) == "1.2rc3"
    assert recipe.file_version("1.2rc3") == "1.2.0.0"


def test_start_menu_entry_starts_the_tray(script: str) -> None:
    icons = entries(script, "Icons")
    assert [i["Name"] for i in icons] == [r"{userprograms}\Pinnace"]
    assert icons[0]["Filename"] == r"{app}\pinnace-tray.exe"
    assert icons[0]["Filename"].endswith(recipe.TRAY_EXE)
    assert recipe.TRAY_EXE == entry.TRAY_NAME + ".exe"  # the frozen program that runs the tray


def test_login_start_is_the_apps_run_value(script: str) -> None:
    (registry,) = entries(script, "Registry")
    assert registry["Root"] == "HKCU"
    assert registry["Subkey"] == autostart.RUN_KEY
    assert registry["ValueName"] == autostart.run_value_name("default")
    assert registry["ValueType"] == "string"
    assert registry["ValueData"] == "{code:TrayRunValue}"
    # Optional, and off unless ticked.
    assert registry["Tasks"] == "autostart"
    (task,) = entries(script, "Tasks")
    assert task["Name"] == "autostart" and task["Flags"] == "unchecked"
    assert "Result := AddQuotes(ExpandConstant('{app}\\pinnace-tray.exe'));" in code(script)


def add_quotes(value: str) -> str:
    """Inno Setup's AddQuotes: quote when there is a space and no quotes yet."""
    return f'"{value}"' if " " in value and not value.startswith('"') else value


@pytest.mark.parametrize("folder", ["Programs/Pinnace", "Jane Doe/Programs/Pinnace"])
def test_run_value_matches_what_the_tray_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                folder: str) -> None:
    """What TrayRunValue computes at install time equals app.autostart.run_value(tray_command())
    as the frozen tray computes it, with and without a space in the install path."""
    monkeypatch.setattr(sys, "platform", "win32")
    app = tmp_path / folder
    app.mkdir(parents=True)
    for name in (recipe.TRAY_EXE, recipe.CLI_EXE):
        (app / name).write_bytes(b"")
    for running in (recipe.TRAY_EXE, recipe.CLI_EXE):
        argv = autostart.tray_command(python=str(app / running))
        assert autostart.run_value(argv) == add_quotes(str(app / recipe.TRAY_EXE))


def test_bundles_the_app_and_the_x86_64_image(script: str, tmp_path: Path) -> None:
    files = entries(script, "Files")
    app = [f for f in files if f["DestDir"] == "{app}"]
    assert app == [{"Source": DIST_DIR + "\\*", "DestDir": "{app}",
                    "Flags": "ignoreversion recursesubdirs createallsubdirs"}]
    image = [f for f in files if f["DestDir"] == r"{app}\images\x86_64"]
    assert sorted(f["Source"] for f in image) == sorted(
        f"{IMAGE_DIR}\\{name}" for name in ("manifest.json", "vmlinuz", "initrd.img", "rootfs.img", "cmdline"))
    assert len(files) == len(app) + len(image)
    with pytest.raises(ValueError, match="aarch64"):
        recipe.image_files(write_image(tmp_path / "arm", arch="aarch64"))


def test_uninstall_keeps_user_data(script: str) -> None:
    assert "UninstallDelete" not in sections(script)
    assert "{localappdata}" not in script.lower()
    assert not re.search(r"DelTree|DeleteFile|RemoveDir", code(script))
    # {userpf} is %LOCALAPPDATA%\Programs: the program never shares the data folder.
    install = setup(script)["DefaultDirName"].replace("{userpf}", r"%LOCALAPPDATA%\Programs").lower()
    assert not install.startswith(r"%localappdata%\pinnace")
    # The one thing uninstall removes besides its files: the Run value, if it starts this copy.
    assert "RegDeleteValue(HKEY_CURRENT_USER, RunKey, RunValueName)" in code(script)
    assert f"RunKey = '{autostart.RUN_KEY}';" in code(script)
    assert f"RunValueName = '{autostart.run_value_name('default')}';" in code(script)


def test_uninstall_stops_the_engine_first(script: str) -> None:
    first, *_ = entries(script, "UninstallRun")
    assert first["Filename"] == r"{app}\pinnace.exe"
    assert first["Parameters"] == "stop"


def test_qemu_check_searches_where_the_app_does(script: str) -> None:
    body = code(script)
    assert f"GetEnv('{qemu_binary.QEMU_ENV}')" in body
    assert qemu_binary.system_binary_name("x86_64") + ".exe" == recipe.QEMU_EXE
    assert f"FileSearch('{recipe.QEMU_EXE}', GetEnv('PATH'))" in body
    assert recipe.QEMU_DIR.replace("{commonpf64}", r"C:\Program Files") in qemu_binary.SEARCH_DIRS["windows"]
    assert f"ExpandConstant('{recipe.QEMU_DIR}\\{recipe.QEMU_EXE}')" in body


def test_pascal_and_inno_quoting() -> None:
    assert recipe.q('say "hi"') == '"say ""hi"""'
    assert params(recipe.entry(Name='a "b"', Flags="x y")) == {"Name": 'a "b"', "Flags": "x y"}
    assert recipe.pascal("it's") == "'it''s'"


def test_ico_holds_png_entries_of_every_size() -> None:
    pngs = {size: b"\x89PNG\r\n\x1a\n" + bytes([size % 256]) * size for size in (256, 16, 32)}
    data = recipe.ico_bytes(pngs)
    reserved, kind, count = struct.unpack_from("<HHH", data)
    assert (reserved, kind, count) == (0, 1, 3)
    found = []
    for i in range(count):
        width, height, _, _, planes, bits, size, offset = struct.unpack_from("<BBBBHHII", data, 6 + 16 * i)
        assert width == height and planes == 1 and bits == 32
        found.append(width or 256)  # 0 means 256
        assert data[offset:offset + size] == pngs[width or 256]
    assert found == [16, 32, 256]
    with pytest.raises(ValueError):
        recipe.ico_bytes({512: b""})


def test_icon_renders_from_the_svg() -> None:
    png = recipe.render_png(ROOT / "resources" / "icons" / "pinnace.svg", 24)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (24, 24)  # IHDR width, height
