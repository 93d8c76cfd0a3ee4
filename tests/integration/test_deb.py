"""The .deb for real: built from this checkout and the built guest image, installed with apt into
a fresh Debian root (debootstrap), then used there — `pinnace --version`, `image info`, the tray's
Qt stack, `pinnace start`, the real docker CLI on the host against the installed engine socket,
`pinnace stop` — and removed, which must leave the user's VM data alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.debroot import DebRoot

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "installers" / "linux" / "build_deb.py"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

needs = [tool for tool in ("debootstrap", "dpkg-deb", "chroot", "docker") if not shutil.which(tool)]
pytestmark = [
    pytest.mark.vm,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap, chroot and bind mounts need root"),
    pytest.mark.skipif(bool(needs), reason=f"missing {', '.join(needs)} (scripts/install.sh installs them)"),
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory, image_dir: Path, image_archive: Path) -> Path:
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run([sys.executable, str(BUILDER), "--image-dir", str(image_dir), "--image-archive",
                             str(image_archive), "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, deb: Path):
    root = DebRoot.create(tmp_path_factory.mktemp("debroot") / "root")
    try:
        result = root.install(deb)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        yield root
    finally:
        root.run("pinnace", "stop", timeout=120)
        root.destroy()


def test_package_fields_and_lintian(deb: Path) -> None:
    assert deb.name == f"pinnace_{VERSION}_amd64.deb"
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Depends"], capture_output=True,
                            text=True, check=True).stdout
    assert f"Version: {VERSION}" in fields and "qemu-system-x86" in fields
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/bin/pinnace", "./usr/bin/pinnace-tray", "./usr/share/applications/pinnace.desktop",
                 "./usr/share/icons/hicolor/scalable/apps/pinnace.svg", "./usr/share/man/man1/pinnace.1.gz",
                 f"./usr/lib/pinnace/images/pinnace-{VERSION}-x86_64.tar.xz", "./usr/lib/pinnace/python/app/cli.py",
                 "./usr/lib/pinnace/python/PySide6/Qt/plugins/platforms/libqxcb.so"):
        assert path in listing, path
    assert "__pycache__" not in listing and "/Qt/qml/" not in listing and "QtQuick" not in listing
    assert not any(line.split()[1] != "root/root" for line in listing.splitlines())
    if shutil.which("lintian"):
        lint = subprocess.run(["lintian", "--fail-on", "error,warning",
                               str(deb)], capture_output=True, text=True, timeout=600)
        assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-2000:]


def test_installed_commands_use_the_bundled_image(installed: DebRoot, image_dir: Path) -> None:
    """The package ships the image as its download form; the first use unpacks it into the user's
    cache with Debian's python3-lz4, byte for byte what the build wrote."""
    assert installed.run("pinnace", "--version").stdout.strip() == f"pinnace {VERSION}"
    info = installed.run("pinnace", "image", "info", "--json", timeout=600)
    assert info.returncode == 0, info.stderr
    bundled = json.loads(info.stdout)
    source = json.loads((image_dir / "manifest.json").read_text())
    assert bundled["artifacts"] == source["artifacts"]
    shown = installed.run("pinnace", "image", "info").stdout
    assert f"/root/.cache/pinnace/images/pinnace-{VERSION}-x86_64-" in shown, shown
    bad = installed.run("pinnace", "config", "set", "cpus", "banana")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_installed_tray_loads_qt(installed: DebRoot) -> None:
    """The tray from the package starts its Qt event loop (offscreen: no panel in a chroot)."""
    result = installed.run("timeout", "-s", "INT", "15", "pinnace-tray", env={"QT_QPA_PLATFORM": "offscreen"},
                           timeout=60)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "showing the dashboard window instead" in result.stderr, result.stderr[-3000:]
    assert result.returncode == 124, result.stderr[-3000:]  # ran until `timeout` sent SIGINT, then quit
    desktop = installed.host_path("/usr/share/applications/pinnace.desktop").read_text()
    assert "Exec=pinnace-tray" in desktop.splitlines()


def test_installed_start_serves_docker_on_the_host(installed: DebRoot) -> None:
    started = installed.run("pinnace", "start", timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    status = json.loads(installed.run("pinnace", "status", "--json").stdout)
    assert status["state"] == "running"
    socket = installed.host_path(status["docker_socket"])
    assert socket.is_socket() and (socket.stat().st_mode & 0o777) == 0o600
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    version = subprocess.run(["docker", "-H", f"unix://{socket}", "version", "--format", "{{.Server.Version}}"],
                             capture_output=True, text=True, timeout=120, env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().startswith("26.")
    stopped = installed.run("pinnace", "stop", timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(installed.run("pinnace", "status", "--json").stdout)["state"] == "stopped"


def test_remove_and_purge_keep_the_users_vm(installed: DebRoot) -> None:
    data = installed.host_path("/root/.local/share/pinnace")
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    assert "instances/default/data.qcow2" in before, before  # the data disk the start made
    removed = installed.run("dpkg", "-r", "pinnace")
    assert removed.returncode == 0, removed.stderr
    assert not installed.host_path("/usr/bin/pinnace").exists()
    assert not installed.host_path("/usr/lib/pinnace").exists()  # postinst's byte-code went with prerm
    purged = installed.run("dpkg", "-P", "pinnace")
    assert purged.returncode == 0, purged.stderr
    assert "pinnace reset" in purged.stdout + purged.stderr
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before
