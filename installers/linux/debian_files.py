"""The text of the .deb's control files and launchers: pure functions, so tests can read them
without building a package.

Layout: /usr/lib/pinnace/python (the app and its bundled Python deps), /usr/lib/pinnace/images/<arch>
(the prebuilt guest), /usr/bin/pinnace and /usr/bin/pinnace-tray, the desktop entry and icons under
/usr/share. Debian's python3 runs it; the compiled parts of paramiko (cryptography, PyNaCl, bcrypt)
come from Debian too, so the bundle is only pure-Python and abi3 wheels and works with any
python3 >= 3.11 the distribution has.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "/usr/lib/pinnace"
LIB_DIR = f"{PREFIX}/python"
IMAGE_ROOT = f"{PREFIX}/images"

QEMU_PACKAGE = {"amd64": "qemu-system-x86", "arm64": "qemu-system-arm"}
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}

# Python distributions Debian provides with compiled code; bundling them would tie the package
# to one CPython minor version (cffi has no abi3 wheel).
SYSTEM_PYTHON_PACKAGES = {
    "cryptography": "python3-cryptography",
    "pynacl": "python3-nacl",
    "bcrypt": "python3-bcrypt",
    "cffi": "python3-cffi-backend",
    "pycparser": None,  # only needed to build cffi modules, never at run time
    "lz4": "python3-lz4",
}

# glibc 2.34: the newest manylinux tag among the bundled wheels (PySide6's).
# What PySide6's Qt libraries and platform plugins link against on a desktop (X11 and Wayland).
QT_RUNTIME = ("libegl1", "libgl1", "libopengl0", "libfontconfig1", "libfreetype6", "libxkbcommon0",
              "libxkbcommon-x11-0", "libdbus-1-3", "libglib2.0-0t64 | libglib2.0-0", "libx11-6",
              "libx11-xcb1", "libxcb1", "libxcb-cursor0", "libxcb-icccm4", "libxcb-image0", "libxcb-keysyms1",
              "libxcb-randr0", "libxcb-render-util0", "libxcb-shape0", "libxcb-xfixes0", "libxcb-xkb1",
              "libxcb-sync1", "libxcb-xinput0", "libwayland-client0", "libwayland-cursor0", "libwayland-egl1")


@dataclass(frozen=True)
class PackageInfo:
    version: str
    deb_arch: str
    installed_kib: int
    maintainer: str = "Pinnace developers <pinnace@localhost>"
    homepage: str = ""


def depends(deb_arch: str) -> list[str]:
    system_python = sorted(pkg for pkg in SYSTEM_PYTHON_PACKAGES.values() if pkg)
    return ["libc6 (>= 2.34)", "libstdc++6", "libgcc-s1", "python3 (>= 3.11)", *system_python,
            QEMU_PACKAGE[deb_arch], "qemu-utils", *QT_RUNTIME]


def control(info: PackageInfo) -> str:
    lines = [
        "Package: pinnace",
        f"Version: {info.version}",
        f"Architecture: {info.deb_arch}",
        f"Maintainer: {info.maintainer}",
        f"Installed-Size: {info.installed_kib}",
        f"Depends: {', '.join(depends(info.deb_arch))}",
        "Recommends: openssh-client, docker-cli | docker.io | docker-ce-cli",
        "Section: admin",
        "Priority: optional",
        "Description: Docker Engine in a tiny, fast, locked-down VM",
        " Pinnace boots a small Linux guest with Docker Engine in QEMU (KVM when",
        " available) and forwards the engine socket to the host, so the docker CLI,",
        " compose and every tool that speaks the Docker API work unchanged. It ships",
        " a tray app and the `pinnace` command; the guest image is prebuilt.",
    ]
    if info.homepage:
        lines.insert(-5, f"Homepage: {info.homepage}")
    return "\n".join(lines) + "\n"


def launcher(module: str) -> str:
    """/usr/bin entry: Debian's python3 in isolated mode (no user site, no PYTHON* variables) with
    the bundle first on sys.path; PYTHONPATH is set for the agent the CLI starts as `python3 -m`."""
    return (
        "#!/usr/bin/python3 -I\n"
        f'"""Pinnace: {module} from the installed bundle in {PREFIX}."""\n'
        "import os\n"
        "import sys\n\n"
        f'sys.path.insert(0, "{LIB_DIR}")\n'
        f'os.environ["PYTHONPATH"] = "{LIB_DIR}"\n'
        f"from {module} import main  # noqa: E402\n\n"
        "sys.exit(main())\n"
    )


def postinst() -> str:
    """Byte-compile with the python3 that will run it (the package ships no .pyc, which would
    tie it to one CPython version)."""
    return (
        "#!/bin/sh\n"
        "set -e\n"
        'if [ "$1" = configure ]; then\n'
        f"    python3 -m compileall -q -j 0 {LIB_DIR} >/dev/null 2>&1 || true\n"
        "fi\n"
    )


def prerm() -> str:
    """Remove the byte-code postinst made, so dpkg leaves no stray files behind."""
    return (
        "#!/bin/sh\n"
        "set -e\n"
        f"find {LIB_DIR} -type d -name __pycache__ -prune -exec rm -rf {{}} + 2>/dev/null || true\n"
    )


def postrm() -> str:
    """Users' VMs live in their home directories: dpkg never deletes them; purge says how."""
    return (
        "#!/bin/sh\n"
        "set -e\n"
        'if [ "$1" = purge ]; then\n'
        '    echo "pinnace: each user\'s VMs, data disks and settings are kept in their home directory."\n'
        '    echo "pinnace: to delete them, each user runs: pinnace reset --yes; rm -rf ~/.local/share/pinnace'
        ' ~/.config/pinnace ~/.cache/pinnace ~/.local/state/pinnace"\n'
        "fi\n"
    )


def copyright_file() -> str:
    return (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: pinnace\n\n"
        "Files: *\n"
        "Copyright: 2026 Pinnace developers\n"
        "License: Apache-2.0\n"
        " On Debian systems, the full text of the Apache License 2.0 is in\n"
        " /usr/share/common-licenses/Apache-2.0.\n\n"
        f"Files: {LIB_DIR.lstrip('/')}/*\n"
        "Copyright: the authors of each bundled Python distribution\n"
        "License: various\n"
        " Each bundled distribution's licence is in its *.dist-info directory.\n\n"
        f"Files: {IMAGE_ROOT.lstrip('/')}/*\n"
        "Copyright: the Linux kernel and Debian package authors\n"
        "License: various\n"
        " The guest image is built from Debian 13 packages and Linux; manifest.json lists each\n"
        " package and version; their licences are those of the Debian packages.\n"
    )


def changelog(version: str, date_rfc2822: str) -> str:
    return (
        f"pinnace ({version}) unstable; urgency=medium\n\n"
        "  * Release built from the Pinnace repository.\n\n"
        f" -- Pinnace developers <pinnace@localhost>  {date_rfc2822}\n"
    )


# Lintian tags this package raises on purpose, each with the reason (lintian 2.116, Debian 12).
LINTIAN_OVERRIDES = {
    "bogus-mail-host": "the project has no mail domain yet; the maintainer field names the team",
    "bogus-mail-host-in-debian-changelog": "same as bogus-mail-host",
    "script-not-executable": "requests/certs.py carries a shebang but is imported, never run",
    "unusual-interpreter": "vmimage/guest/init runs inside the guest on busybox; requests/certs.py is a module",
    "shared-library-lacks-prerequisites": "libicudata is ICU's data table: a library with no code needs no libc",
}

COMMANDS = {
    "pinnace": ("start, stop and inspect the Pinnace container VM",
                "pinnace [--name INSTANCE] {start,stop,restart,status,reset,logs,config,env,ssh,image,tray} ...",
                "Boots a small Linux guest with Docker Engine in QEMU and forwards the engine socket to the host. "
                "Run \\fBpinnace --help\\fR and \\fBpinnace COMMAND --help\\fR for every option."),
    "pinnace-tray": ("the Pinnace tray app", "pinnace-tray [--name INSTANCE] [--dashboard | --menu]",
                     "Shows the VM's state in the system tray, with start, stop, settings and reset."),
}


def manpage(command: str, version: str) -> str:
    summary, synopsis, description = COMMANDS[command]
    return (
        f'.TH {command.upper()} 1 "" "pinnace {version}" "User Commands"\n'
        f".SH NAME\n{command} \\- {summary}\n"
        f".SH SYNOPSIS\n.B {synopsis}\n"
        f".SH DESCRIPTION\n{description}\n"
        ".SH FILES\n"
        "Settings, VM data and logs live under ~/.config/pinnace, ~/.local/share/pinnace and\n"
        "~/.local/state/pinnace; the guest image under /usr/lib/pinnace/images.\n"
    )


def lintian_overrides() -> str:
    return "".join(f"# {why}\npinnace: {tag}\n" for tag, why in LINTIAN_OVERRIDES.items())
