"""The .deb's control files, launchers and dependency choice (pure); the real build and install
are tests/integration/test_deb.py."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests import installer_modules
from vmimage import locations

ROOT = Path(__file__).resolve().parents[2]
LINUX = ROOT / "installers" / "linux"


def load(name: str) -> ModuleType:
    if str(LINUX) not in sys.path:
        sys.path.insert(0, str(LINUX))  # build_deb imports its siblings by name
    return installer_modules.load(name, LINUX / f"{name}.py")


@pytest.fixture(scope="module")
def files() -> ModuleType:
    return load("debian_files")


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    return load("build_deb")


def control_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith(" "):
            fields[key] += "\n" + line
        else:
            key, _, value = line.partition(": ")
            fields[key] = value
    return fields


def test_control_names_qemu_and_debian_crypto(files: ModuleType) -> None:
    text = files.control(files.PackageInfo(version="1.2.3", deb_arch="amd64", installed_kib=4096))
    fields = control_fields(text)
    assert fields["Package"] == "pinnace" and fields["Version"] == "1.2.3" and fields["Architecture"] == "amd64"
    assert fields["Installed-Size"] == "4096"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "qemu-system-x86" in depends and "qemu-utils" in depends
    assert {"python3-cryptography", "python3-nacl", "python3-bcrypt"} <= set(depends)
    assert "python3 (>= 3.11)" in depends
    assert fields["Description"].startswith("Docker Engine") and text.endswith("\n")
    arm = control_fields(files.control(files.PackageInfo(version="1", deb_arch="arm64", installed_kib=1)))
    assert "qemu-system-arm" in arm["Depends"] and "qemu-system-x86" not in arm["Depends"]


def test_launcher_is_isolated_and_finds_the_bundle(files: ModuleType) -> None:
    text = files.launcher("app.cli")
    assert text.startswith("#!/usr/bin/python3 -I\n")
    compile(text, "pinnace", "exec")
    assert f'sys.path.insert(0, "{files.LIB_DIR}")' in text and "from app.cli import main" in text
    # the agent is started as `python3 -m hypervisor.agent`, which must find the bundle too
    assert f'os.environ["PYTHONPATH"] = "{files.LIB_DIR}"' in text


def test_maintainer_scripts(files: ModuleType) -> None:
    assert "compileall" in files.postinst() and files.LIB_DIR in files.postinst()
    assert "__pycache__" in files.prerm()
    purge = files.postrm()
    assert '"$1" = purge' in purge and "pinnace reset" in purge
    assert "rm -rf /" not in purge.replace("rm -rf ~", "")  # never deletes anything itself


def test_compiled_python_deps_come_from_debian(builder: ModuleType) -> None:
    closure = {"paramiko": "4.0.0", "cryptography": "46.0", "pynacl": "1.6", "bcrypt": "5", "cffi": "2",
               "pycparser": "2.2", "docker": "7.2.0", "pyside6-essentials": "6.12.0"}
    wanted = builder.bundled_requirements(closure)
    assert wanted == ["docker==7.2.0", "paramiko==4.0.0", "pyside6-essentials==6.12.0"]


def test_pip_argv_accepts_only_portable_wheels(builder: ModuleType, tmp_path: Path) -> None:
    argv = builder.pip_install_argv(tmp_path, ["docker==7.2.0"], "x86_64")
    assert argv[argv.index("--target") + 1] == str(tmp_path)
    abis = [argv[i + 1] for i, a in enumerate(argv) if a == "--abi"]
    assert abis == ["abi3", "none"]  # never cp311: the package must run on any newer python3
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert "manylinux_2_36_x86_64" in platforms and "manylinux_2_17_x86_64" in platforms
    assert "manylinux_2_39_x86_64" not in platforms  # newer than Debian 12's glibc
    assert "--no-deps" in argv and "--only-binary=:all:" in argv


def test_runtime_closure_matches_pyproject(builder: ModuleType) -> None:
    closure = builder.runtime_closure()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in declared:
        name = spec.split(">")[0].split("=")[0].split("<")[0].strip().lower().replace("_", "-")
        assert name in closure, name
    assert "pytest" not in closure and "ruff" not in closure  # test extras stay out


def test_lintian_overrides_each_have_a_reason(files: ModuleType) -> None:
    text = files.lintian_overrides()
    lines = text.splitlines()
    assert len(lines) == 2 * len(files.LINTIAN_OVERRIDES)
    for reason, override in zip(lines[::2], lines[1::2], strict=True):
        assert reason.startswith("# ") and len(reason) > 10
        assert override.startswith("pinnace: ")


def test_image_lookup_prefers_user_build_then_bundle(tmp_path: Path) -> None:
    package_dir = tmp_path / "usr/lib/pinnace/python"
    bundled = tmp_path / "usr/lib/pinnace/images/x86_64"
    env = {"PINNACE_HOME": str(tmp_path / "home")}
    user = tmp_path / "home/images/x86_64"
    # nothing anywhere: the build location, so the error names where `image build` writes
    assert locations.default_image_dir("x86_64", env, package_dir) == user
    bundled.mkdir(parents=True)
    (bundled / "manifest.json").write_text("{}")
    assert locations.default_image_dir("x86_64", env, package_dir) == bundled
    user.mkdir(parents=True)
    (user / "manifest.json").write_text("{}")
    assert locations.default_image_dir("x86_64", env, package_dir) == user
    assert locations.default_image_dir("x86_64", {**env, "PINNACE_IMAGE_DIR": "/x"}, package_dir) == Path("/x")
    # `image build` never writes into a bundle
    assert locations.build_image_dir("x86_64", env) == user


def test_macos_bundle_images_are_found(tmp_path: Path) -> None:
    frameworks = tmp_path / "Pinnace.app/Contents/Frameworks"
    images = tmp_path / "Pinnace.app/Contents/Resources/images/aarch64"
    images.mkdir(parents=True)
    (images / "manifest.json").write_text("{}")
    env = {"PINNACE_HOME": str(tmp_path / "home")}
    assert locations.default_image_dir("aarch64", env, frameworks) == images


def test_a_shipped_archive_unpacks_into_the_users_cache_and_a_user_build_still_wins(tmp_path: Path) -> None:
    package_dir = tmp_path / "usr/lib/pinnace/python"
    images = tmp_path / "usr/lib/pinnace/images"
    images.mkdir(parents=True)
    env = {"PINNACE_HOME": str(tmp_path / "home"), "PINNACE_CACHE_DIR": str(tmp_path / "cache")}
    (images / "pinnace-0.1.0-aarch64.tar.xz").write_bytes(b"other arch")
    assert locations.bundled_archive("x86_64", package_dir) is None
    old, new = images / "pinnace-0.1.0-x86_64.tar.xz", images / "pinnace-0.2.0-x86_64.tar.xz"
    old.write_bytes(b"old")
    new.write_bytes(b"newer")
    assert locations.bundled_archive("x86_64", package_dir) == new
    unpacked = locations.default_image_dir("x86_64", env, package_dir)
    assert unpacked == tmp_path / "cache/images/pinnace-0.2.0-x86_64-5"  # an upgrade's archive: a new dir
    assert unpacked == locations.unpacked_dir(new, env)
    user = tmp_path / "home/images/x86_64"
    user.mkdir(parents=True)
    (user / "manifest.json").write_text("{}")
    assert locations.default_image_dir("x86_64", env, package_dir) == user
