"""What the Windows build generates: the Inno Setup script (.iss) and the icon (.ico).

The script is rendered by pure functions (stdlib, plus app.autostart for the login-start value),
so its content is unit-tested on any host. build.ps1 runs PyInstaller, then this file's CLI:

    python installers/windows/recipe.py icon OUT.ico
    python installers/windows/recipe.py iss --dist DIR --image DIR --icon ICO --output-dir DIR --out FILE
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # installers/: shared.py
from shared import project_version, render_png  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

APP_NAME = "Pinnace"
# Identifies the installation for upgrades and uninstall: never change it.
APP_ID = "{6E0C2F7B-3B5D-4E0A-9C61-5A8E2D4F7B13}"
# Named after the console scripts, so app.autostart.tray_command() run by either program finds
# pinnace-tray.exe beside sys.executable and writes the same Run value as this installer.
TRAY_EXE = "pinnace-tray.exe"
CLI_EXE = "pinnace.exe"
IMAGE_ARCH = "x86_64"  # WHPX runs x86_64 guests only; Windows on Arm would emulate either way
# Beside PyInstaller's _internal folder, where vmimage.locations.bundled_image_roots() looks.
IMAGE_DEST = rf"{{app}}\images\{IMAGE_ARCH}"
# Where the QEMU installer (and winget) puts QEMU; hypervisor/qemu_binary.py searches it after
# PINNACE_QEMU and PATH.
QEMU_DIR = r"{commonpf64}\qemu"
QEMU_EXE = "qemu-system-x86_64.exe"
ICO_SIZES = (16, 20, 24, 32, 40, 48, 64, 256)


def file_version(version: str) -> str:
    """VersionInfoVersion takes four integers: the release part of a PEP 440 version, padded."""
    match = re.match(r"\d+(?:\.\d+){0,3}", version)
    if not match:
        raise ValueError(f"version {version!r} does not start with a release number")
    parts = match.group(0).split(".")
    return ".".join(parts + ["0"] * (4 - len(parts)))


def image_files(image_dir: Path) -> list[str]:
    """The files of a built image that boot needs: manifest.json and the artifacts it lists."""
    manifest = json.loads((image_dir / "manifest.json").read_text())
    if manifest.get("arch") != IMAGE_ARCH:
        raise ValueError(f"{image_dir}: an image for {manifest.get('arch')}, expected {IMAGE_ARCH}")
    return ["manifest.json", *sorted(a["file"] for a in manifest["artifacts"].values())]


def q(value: str) -> str:
    """An Inno Setup parameter value: double-quoted, embedded quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


def pascal(value: str) -> str:
    """A Pascal string literal: single-quoted, embedded quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def entry(**params: str) -> str:
    """One line of an entry section; `Flags`/`Tasks`/`Root`/`ValueType` take bare words."""
    bare = {"Flags", "Tasks", "Root", "ValueType"}
    return "; ".join(f"{k}: {v if k in bare else q(v)}" for k, v in params.items())


def run_entry() -> tuple[str, str, str]:
    """(key, value name, value) of the HKCU Run entry, from app.autostart so the tray's "Start at
    login" toggle sees the installer's entry as its own."""
    from app.autostart import RUN_KEY, run_value_name

    return RUN_KEY, run_value_name("default"), "{code:TrayRunValue}"


def code_section(run_key: str, run_name: str) -> str:
    """Pascal: the Run value, the QEMU check, and cleanup of the Run value at uninstall."""
    qemu_dir = QEMU_DIR.replace("{commonpf64}", "%ProgramFiles%")
    return f"""\
const
  RunKey = {pascal(run_key)};
  RunValueName = {pascal(run_name)};

{{ app.autostart.run_value([exe]) is subprocess.list2cmdline: it quotes a path only when it holds a
  space or a tab, and a Windows path holds no tab or quote, so that is exactly AddQuotes. }}
function TrayRunValue(Param: String): String;
begin
  Result := AddQuotes(ExpandConstant('{{app}}\\{TRAY_EXE}'));
end;

{{ The places hypervisor/qemu_binary.py searches: PINNACE_QEMU, PATH, %ProgramFiles%\\qemu. }}
function QemuFound(): Boolean;
begin
  Result := (GetEnv('PINNACE_QEMU') <> '')
    or (FileSearch('{QEMU_EXE}', GetEnv('PATH')) <> '')
    or FileExists(ExpandConstant('{QEMU_DIR}\\{QEMU_EXE}'));
end;

function QemuMissingMessage(): String;
begin
  Result := 'Pinnace runs its engine in QEMU, which was not found (PINNACE_QEMU, PATH, {qemu_dir}).'
    + #13#10#13#10 + 'Install it with:  winget install SoftwareFreedomConservancy.QEMU'
    + #13#10#13#10 + 'For hardware acceleration also turn on the Windows feature '
    + '"Windows Hypervisor Platform", then restart Windows.';
end;

procedure CurStepChanged(CurStep: TSetupStep);
begin
  if (CurStep = ssPostInstall) and not QemuFound() then
    SuppressibleMsgBox(QemuMissingMessage(), mbInformation, MB_OK, IDOK);
end;

{{ Drop the login-start value if it starts this copy, whoever wrote it (this Setup or the tray's
  toggle). User data under %LOCALAPPDATA%\\pinnace (settings, data disk, built images) stays. }}
procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Value: String;
begin
  if (CurUninstallStep = usUninstall)
    and RegQueryStringValue(HKEY_CURRENT_USER, RunKey, RunValueName, Value)
    and (Pos(Lowercase(ExpandConstant('{{app}}\\')), Lowercase(Value)) > 0) then
    RegDeleteValue(HKEY_CURRENT_USER, RunKey, RunValueName);
end;
"""


def iss_script(
    version: str,
    dist_dir: str,
    image_dir: str,
    image_names: Sequence[str],
    icon: str,
    output_dir: str,
) -> str:
    """The whole .iss. Paths are the build machine's (Windows paths, used as given)."""
    run_key, run_name, run_data = run_entry()
    tray = rf"{{app}}\{TRAY_EXE}"
    setup = {
        "AppId": "{" + APP_ID,  # a leading "{{" is Inno's escape for a literal brace
        "AppName": APP_NAME,
        "AppVersion": version,
        "AppVerName": f"{APP_NAME} {version}",
        "AppPublisher": APP_NAME,
        "VersionInfoVersion": file_version(version),
        # Per user: no UAC prompt, files under %LOCALAPPDATA%\Programs, registry only in HKCU.
        "PrivilegesRequired": "lowest",
        "DefaultDirName": rf"{{userpf}}\{APP_NAME}",
        "DisableProgramGroupPage": "yes",
        "ArchitecturesAllowed": "x64compatible",
        "ArchitecturesInstallIn64BitMode": "x64compatible",
        "MinVersion": "10.0",
        "SetupIconFile": icon,
        "UninstallDisplayIcon": tray,
        "UninstallDisplayName": APP_NAME,
        "OutputDir": output_dir,
        "OutputBaseFilename": f"{APP_NAME}-{version}-{IMAGE_ARCH}-setup",
        "Compression": "lzma2",
        "SolidCompression": "yes",
        "WizardStyle": "modern",
    }
    files = [entry(Source=rf"{dist_dir}\*", DestDir="{app}", Flags="ignoreversion recursesubdirs createallsubdirs")]
    files += [entry(Source=rf"{image_dir}\{name}", DestDir=IMAGE_DEST, Flags="ignoreversion") for name in image_names]
    sections = {
        "Setup": [f"{k}={v}" for k, v in setup.items()],
        "Languages": [entry(Name="english", MessagesFile="compiler:Default.isl")],
        "Tasks": [entry(Name="autostart", Description="Start Pinnace when I sign in", Flags="unchecked")],
        "Files": files,
        "Icons": [entry(Name=rf"{{userprograms}}\{APP_NAME}", Filename=tray, WorkingDir="{app}",
                        Comment="Docker Engine in a small, fast VM")],
        "Registry": [entry(Root="HKCU", Subkey=run_key, ValueType="string", ValueName=run_name,
                           ValueData=run_data, Tasks="autostart")],
        "Run": [entry(Filename=tray, Description="Start Pinnace now", Flags="nowait postinstall skipifsilent")],
        # Shut the VM down cleanly, then end the tray (and the agent, the same executable) so
        # their files can go.
        "UninstallRun": [
            entry(Filename=rf"{{app}}\{CLI_EXE}", Parameters="stop", Flags="runhidden waituntilterminated",
                  RunOnceId="StopEngine"),
            entry(Filename=r"{sys}\taskkill.exe", Parameters=f"/F /T /IM {TRAY_EXE}", Flags="runhidden",
                  RunOnceId="EndTray"),
        ],
    }
    lines = ["; Generated by installers/windows/recipe.py; edit that, not this file.", ""]
    for name, body in sections.items():
        lines += [f"[{name}]", *body, ""]
    lines += ["[Code]", code_section(run_key, run_name)]
    return "\n".join(lines)


def ico_bytes(pngs: Mapping[int, bytes]) -> bytes:
    """An .ico of PNG-compressed entries (read by Windows Vista and later at every size)."""
    header = struct.pack("<HHH", 0, 1, len(pngs))
    offset = len(header) + 16 * len(pngs)
    directory, blobs = [], []
    for size, png in sorted(pngs.items()):
        if not 1 <= size <= 256:
            raise ValueError(f"icon size {size} is outside 1..256")
        # Width and height are one byte each; 0 means 256.
        directory.append(struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(png), offset))
        blobs.append(png)
        offset += len(png)
    return header + b"".join(directory) + b"".join(blobs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recipe.py", description="Generate the Windows installer inputs.")
    sub = parser.add_subparsers(dest="command", required=True)
    icon = sub.add_parser("icon", help="render resources/icons/pinnace.svg to an .ico")
    icon.add_argument("out", type=Path)
    iss = sub.add_parser("iss", help="write the Inno Setup script")
    iss.add_argument("--dist", required=True, help="PyInstaller's output folder (holds pinnace-tray.exe)")
    iss.add_argument("--image", required=True, type=Path, help="a built x86_64 guest image directory")
    iss.add_argument("--icon", required=True, help="the .ico for Setup")
    iss.add_argument("--output-dir", required=True, help="where ISCC writes the installer")
    iss.add_argument("--out", required=True, type=Path, help="the .iss to write")
    args = parser.parse_args(argv)
    if args.command == "icon":
        svg = ROOT / "resources" / "icons" / "pinnace.svg"
        args.out.write_bytes(ico_bytes({size: render_png(svg, size) for size in ICO_SIZES}))
        return 0
    from vmimage import manifest as image_manifest  # the build venv has the project installed

    try:
        image_manifest.verify(args.image, image_manifest.load(args.image))
        names = image_files(args.image)
    except (image_manifest.ManifestError, ValueError) as exc:
        print(f"recipe.py: {exc}", file=sys.stderr)
        return 1
    text = iss_script(project_version(), args.dist, str(args.image), names, args.icon, args.output_dir)
    # Inno Setup reads a UTF-8 script when it starts with a BOM.
    args.out.write_text(text, encoding="utf-8-sig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
