"""Bad input gives one readable line and a non-zero exit, never a traceback, never lost data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pinnace(home: Path, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINNACE_")}
    env.update(PINNACE_HOME=str(home), **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_invalid_settings_file_is_named_and_kept(tmp_path: Path) -> None:
    settings = tmp_path / "config" / "default" / "settings.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text('cpus = "two"\n')
    result = pinnace(tmp_path, "start")
    assert result.returncode == 1
    assert "cpus" in one_line_error(result)
    assert settings.read_text() == 'cpus = "two"\n', "an invalid file is never rewritten"


def test_unknown_setting_key(tmp_path: Path) -> None:
    result = pinnace(tmp_path, "config", "set", "cpu", "2")
    assert result.returncode == 2
    assert "cpu" in one_line_error(result)


def test_impossible_values(tmp_path: Path) -> None:
    result = pinnace(tmp_path, "config", "set", "cpus", str((os.cpu_count() or 1) + 1))
    assert result.returncode == 2 and "cpus" in one_line_error(result)
    result = pinnace(tmp_path, "config", "set", "memory_mib", str(10**9))
    assert result.returncode == 2 and "memory_mib" in one_line_error(result)


def test_missing_qemu(tmp_path: Path) -> None:
    result = pinnace(tmp_path, "start", extra_env={"PINNACE_QEMU": "/nonexistent/qemu"})
    assert result.returncode == 1
    assert "/nonexistent/qemu" in one_line_error(result)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert pinnace(tmp_path, "start", "--cpus", "lots").returncode == 2
    assert pinnace(tmp_path, "frobnicate").returncode == 2
    bad = pinnace(tmp_path, "--name", "Bad Name!", "status")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_stop_when_never_started(tmp_path: Path) -> None:
    result = pinnace(tmp_path, "stop")
    assert result.returncode == 0 and "not running" in result.stdout


@pytest.mark.vm
@pytest.mark.timeout(180)
def test_explicit_unusable_accelerator_fails_clearly(tmp_path: Path, image_dir: Path) -> None:
    """Here /dev/kvm exists but cannot boot a guest: an explicit --accel kvm must not fall back."""
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm on this host")
    from hypervisor.accel import run_probe
    from hypervisor.spec import probe_argv
    from vmimage import manifest

    m = manifest.load(image_dir)
    probe = run_probe(probe_argv(Path("/usr/bin/qemu-system-x86_64"), "x86_64", "kvm",
                                 m.path_of(image_dir, "kernel"), m.path_of(image_dir, "initrd"), "linux"))
    if probe.ok:
        pytest.skip("KVM works on this host")
    result = pinnace(tmp_path, "start", "--accel", "kvm", extra_env={"PINNACE_IMAGE_DIR": str(image_dir)},
                     timeout=150)
    assert result.returncode == 1
    assert "kvm" in result.stderr.lower() and "Traceback" not in result.stderr
    settings = tmp_path / "config" / "default" / "settings.toml"
    assert not settings.exists() or 'accel = "kvm"' not in settings.read_text(), "a failed start keeps no override"
    status = pinnace(tmp_path, "status")
    assert "running" not in status.stdout.splitlines()[1]
