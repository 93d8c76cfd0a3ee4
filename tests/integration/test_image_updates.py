"""Guest image updates that cannot strand the user (issue #19), on one small throwaway instance
in real QEMU: an update boots, passes its health check and is kept; a broken update (a kernel
that panics) is rolled back by itself; `pinnace image rollback` returns to the previous image; a
damaged image is refused before it boots. A volume written before the first update is read
after every step. Image variants share the built artefacts (tests/image_variants)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import image_variants
from tests.conftest import Instance, make_instance

pytestmark = [pytest.mark.vm]

VOLUME = "pinnace-update-data"


@pytest.fixture(scope="module")
def updates_vm(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Iterator[tuple[Instance, Path, Path]]:
    """(instance, its installed image dir, a scratch dir): the installed image is ours to swap."""
    root = tmp_path_factory.mktemp("updates")
    installed = image_variants.derive(image_dir, root / "installed", "0.0.1+a", "pinnace.marker=A")
    vm = make_instance(root / "home", installed, name="updates")
    (root / "home").mkdir(exist_ok=True)
    (root / "home" / "config" / "updates").mkdir(parents=True, exist_ok=True)
    (root / "home" / "config" / "updates" / "settings.toml").write_text("disk_gib = 4\nmemory_mib = 1024\n")
    try:
        yield vm, installed, root
    finally:
        vm.pinnace("stop", timeout=120)


def status_of(vm: Instance) -> dict[str, Any]:
    done = vm.pinnace("status", "--json", timeout=180)
    return json.loads(done.stdout)


def marker(vm: Instance) -> str:
    """The marker on the running guest kernel's command line (a container sees /proc/cmdline)."""
    line = vm.docker("run", "--rm", "pinnace-test/busybox", "cat", "/proc/cmdline").stdout
    found = [word.split("=", 1)[1] for word in line.split() if word.startswith("pinnace.marker=")]
    return found[0] if found else ""


def volume_text(vm: Instance) -> str:
    return vm.docker("run", "--rm", "-v", f"{VOLUME}:/v", "pinnace-test/busybox", "cat", "/v/kept").stdout


def ok(done: Any) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(600)
def test_an_update_boots_passes_its_check_and_is_kept(updates_vm: tuple[Instance, Path, Path],
                                                      image_dir: Path) -> None:

    vm, installed, _ = updates_vm
    ok(vm.pinnace("start"))
    first = status_of(vm)
    assert (first["image_version"], first["image_role"]) == ("0.0.1+a", "known good")
    vm.busybox_image()
    vm.docker("run", "--rm", "-v", f"{VOLUME}:/v", "pinnace-test/busybox", "sh", "-c", "echo kept > /v/kept && sync")
    assert marker(vm) == "A"

    image_variants.derive(image_dir, installed, "0.0.2+b", "pinnace.marker=B")  # the package upgrade
    ok(vm.pinnace("restart"))
    now = status_of(vm)
    assert (now["state"], now["image_version"], now["image_role"]) == ("running", "0.0.2+b", "known good")
    assert "updated to 0.0.2+b" in now["image_notice"] and "was 0.0.1+a" in now["image_notice"]
    assert marker(vm) == "B" and volume_text(vm) == "kept\n"
    slots = json.loads(ok(vm.pinnace("image", "status", "--json")))
    roles = {row["role"]: row["version"] for row in slots["slots"]}
    assert roles == {"known good": "0.0.2+b", "previous": "0.0.1+a"}
    assert slots["running"] == now["image_fingerprint"]


@pytest.mark.timeout(600)
def test_a_broken_update_is_rolled_back_by_itself(updates_vm: tuple[Instance, Path, Path], image_dir: Path) -> None:
    vm, installed, _ = updates_vm
    image_variants.derive(image_dir, installed, "0.0.3+broken", image_variants.BROKEN_CMDLINE)
    began = time.monotonic()
    done = vm.pinnace("restart")
    took = time.monotonic() - began
    assert done.returncode == 0, done.stdout + done.stderr  # the user got a working engine
    now = status_of(vm)
    assert (now["state"], now["image_version"]) == ("running", "0.0.2+b")
    notice = now["image_notice"]
    assert "rolled back to 0.0.2+b" in notice and "0.0.3+broken" in notice and "Kernel panic" in notice, notice
    text = ok(vm.pinnace("status"))
    assert "rolled back to 0.0.2+b" in text
    listing = ok(vm.pinnace("image", "status"))
    assert "failed      0.0.3+broken" in listing and "|" in listing  # the console's last lines
    assert marker(vm) == "B" and volume_text(vm) == "kept\n"
    assert took < 180, f"the rollback took {took:.0f} s"


@pytest.mark.timeout(600)
def test_rollback_returns_to_the_previous_image(updates_vm: tuple[Instance, Path, Path]) -> None:
    vm, _, _ = updates_vm
    refused = vm.pinnace("image", "rollback", input="")
    assert refused.returncode == 2 and "--yes" in refused.stderr and "Traceback" not in refused.stderr
    ok(vm.pinnace("image", "rollback", "--yes"))
    now = status_of(vm)
    assert (now["state"], now["image_version"], now["image_role"]) == ("running", "0.0.1+a", "known good")
    assert "by request" in now["image_notice"]
    # the installed (broken) image is still not tried, and the status says why
    assert "is not booted" in now["image_note"]
    assert marker(vm) == "A" and volume_text(vm) == "kept\n"
    again = vm.pinnace("image", "rollback", "--yes")
    assert again.returncode == 1 and "no previous guest image" in again.stderr


@pytest.mark.timeout(600)
def test_a_damaged_image_is_refused_before_it_boots(updates_vm: tuple[Instance, Path, Path], image_dir: Path) -> None:
    vm, installed, root = updates_vm
    damaged = image_variants.derive(image_dir, root / "damaged", "0.0.4+damaged", "pinnace.marker=D")
    image_variants.corrupt(damaged)
    refused = vm.pinnace("image", "update", "--from", str(damaged))
    assert refused.returncode == 1 and "does not match its manifest" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    # the same damage in the installed image: the known-good image keeps running
    image_variants.derive(image_dir, installed, "0.0.4+damaged", "pinnace.marker=D")
    image_variants.corrupt(installed)
    ok(vm.pinnace("restart"))
    now = status_of(vm)
    assert (now["state"], now["image_version"]) == ("running", "0.0.1+a")
    assert "refused" in now["image_notice"] and "does not match its manifest" in now["image_notice"]

    # and a good image staged by hand becomes the next known good
    good = image_variants.derive(image_dir, root / "manual", "0.0.5+e", "pinnace.marker=E")
    staged = ok(vm.pinnace("image", "update", "--from", str(good)))
    assert "staged 0.0.5+e" in staged and "pinnace restart" in staged
    ok(vm.pinnace("restart"))
    now = status_of(vm)
    assert (now["image_version"], now["image_role"]) == ("0.0.5+e", "known good")
    assert marker(vm) == "E" and volume_text(vm) == "kept\n"
