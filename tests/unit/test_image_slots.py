"""The image slot store: staging verified copies, choosing what boots, commit, reject, rollback,
update --from, data formats and pruning — on tiny real image directories (no VM)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hypervisor.agent.guest_image import GuestImage, ImageError
from hypervisor.agent.image_slots import BootPlan, ImageSlots, SlotError, fingerprint
from hypervisor.paths import Paths
from tests import image_variants
from vmimage import manifest as image_manifest

pytestmark = pytest.mark.timeout(30)


def make_image(directory: Path, version: str, data_format: int = 1, cmdline: str = "quiet") -> GuestImage:
    image_variants.tiny(directory, version, data_format=data_format, cmdline=cmdline)
    return GuestImage(directory, image_manifest.load(directory))


@pytest.fixture
def slots(tmp_path: Path) -> ImageSlots:
    paths = Paths.for_instance("t", {"PINNACE_HOME": str(tmp_path / "home")})
    paths.ensure_dirs()
    return ImageSlots(paths)


def boot(slots: ImageSlots, installed: GuestImage | None) -> BootPlan:
    """plan + commit, as a healthy boot does."""
    def locate() -> GuestImage:
        if installed is None:
            raise ImageError("no guest image")
        return installed
    plan = slots.plan(locate)
    slots.commit(plan)
    return plan


def test_the_first_image_is_copied_verified_and_becomes_known_good(slots: ImageSlots, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    plan = slots.plan(lambda: a)
    assert plan.candidate and plan.fallback is None and plan.image.directory != a.directory
    assert plan.image.directory.parent == slots.store
    slots.commit(plan)
    assert slots.load().known_good == fingerprint(a.manifest)
    # the slot is independent of the installed directory: a rebuild replaces files by rename
    (a.directory / "rootfs.img").unlink()
    (a.directory / "rootfs.img").write_bytes(b"rebuilt")
    assert slots.image(plan.fingerprint) is not None
    assert (plan.image.directory / "rootfs.img").read_bytes().startswith(b"rootfs of 1.0")


def test_a_new_installed_image_is_a_candidate_falling_back_to_known_good(slots: ImageSlots, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    boot(slots, a)
    b = make_image(tmp_path / "b", "2.0")
    plan = slots.plan(lambda: b)
    assert plan.candidate and plan.fallback is not None and plan.fallback.manifest.version == "1.0"
    notice = slots.commit(plan)
    assert "updated to 2.0" in notice and "was 1.0" in notice
    record = slots.load()
    assert record.known_good == fingerprint(b.manifest) and record.previous == fingerprint(a.manifest)
    again = slots.plan(lambda: b)
    assert not again.candidate and again.fingerprint == record.known_good


def test_a_rejected_candidate_is_not_booted_again(slots: ImageSlots, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    boot(slots, a)
    b = make_image(tmp_path / "b", "2.0")
    plan = slots.plan(lambda: b)
    notice = slots.reject(plan, "the engine did not answer /_ping in time", ["console 1", "console 2"])
    assert notice.startswith("rolled back to 1.0") and "2.0" in notice
    failure = slots.load().failed[plan.fingerprint]
    assert failure.console == ["console 1", "console 2"] and failure.version == "2.0"
    nxt = slots.plan(lambda: b)
    assert not nxt.candidate and nxt.image.manifest.version == "1.0" and "/_ping" in nxt.note


def test_a_damaged_candidate_is_refused_before_boot_in_one_line(slots: ImageSlots, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    boot(slots, a)
    b = make_image(tmp_path / "b", "2.0")
    rootfs = b.directory / "rootfs.img"
    rootfs.write_bytes(rootfs.read_bytes().replace(b"2.0", b"2.x"))  # same size, other bytes
    plan = slots.plan(lambda: b)
    assert not plan.candidate and plan.image.manifest.version == "1.0"
    assert "was refused" in plan.note and "does not match its manifest" in plan.note and "\n" not in plan.note
    assert "still running 1.0" in slots.load().notice
    assert slots.image(fingerprint(b.manifest)) is None  # nothing of it was stored


def test_a_damaged_first_image_is_an_error(slots: ImageSlots, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    (a.directory / "vmlinuz").write_bytes(b"x" * (a.directory / "vmlinuz").stat().st_size)
    with pytest.raises(ImageError, match="does not match its manifest"):
        slots.plan(lambda: a)


def test_the_known_good_boots_when_no_image_is_installed_any_more(slots: ImageSlots, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    boot(slots, a)
    plan = slots.plan(lambda: (_ for _ in ()).throw(ImageError("no guest image")))
    assert plan.image.manifest.version == "1.0" and not plan.candidate


def test_a_damaged_known_good_copy_is_restored_from_the_same_installed_image(slots: ImageSlots, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    first = boot(slots, a)
    stored = first.image.directory / "initrd.img"
    stored.unlink()
    stored.write_bytes(b"y" * len(b"initrd of 1.0 quiet"))
    plan = slots.plan(lambda: a)
    assert plan.image.manifest.version == "1.0"
    assert (plan.image.directory / "initrd.img").read_bytes() == b"initrd of 1.0 quiet"


def test_rollback_returns_to_the_previous_image_and_marks_the_current_one(slots: ImageSlots, tmp_path: Path) -> None:
    a, b = make_image(tmp_path / "a", "1.0"), make_image(tmp_path / "b", "2.0")
    boot(slots, a)
    boot(slots, b)
    was, now = slots.rollback()
    assert was.startswith("2.0") and now.startswith("1.0")
    plan = slots.plan(lambda: b)
    assert plan.image.manifest.version == "1.0" and "rolled back by the user" in plan.note
    assert "rolled back to 1.0" in slots.load().notice


def test_rollback_without_a_previous_image_says_so(slots: ImageSlots, tmp_path: Path) -> None:
    boot(slots, make_image(tmp_path / "a", "1.0"))
    with pytest.raises(SlotError, match="no previous guest image"):
        slots.rollback()


def test_update_from_stages_a_candidate_that_wins_over_the_installed_image(slots: ImageSlots, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    boot(slots, a)
    c = make_image(tmp_path / "c", "3.0")
    described, known_good = slots.update_from(c.directory)
    assert described.startswith("3.0") and not known_good
    plan = slots.plan(lambda: a)
    assert plan.candidate and plan.image.manifest.version == "3.0" and plan.fallback is not None
    slots.commit(plan)
    assert slots.plan(lambda: a).image.manifest.version == "3.0"  # the installed 1.0 is not "new"


def test_update_from_a_directory_without_an_image_is_one_line(slots: ImageSlots, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no usable guest image"):
        slots.update_from(tmp_path / "nothing")


def test_no_fallback_to_an_older_data_format(slots: ImageSlots, tmp_path: Path) -> None:
    boot(slots, make_image(tmp_path / "a", "1.0", data_format=1))
    b = make_image(tmp_path / "b", "2.0", data_format=2)
    plan = slots.plan(lambda: b)
    assert plan.candidate and plan.fallback is None
    slots.commit(plan)
    with pytest.raises(SlotError, match="data format 2"):
        slots.rollback()


def test_unused_stored_images_are_pruned(slots: ImageSlots, tmp_path: Path) -> None:
    for n in range(4):
        boot(slots, make_image(tmp_path / f"i{n}", f"{n}.0"))
    kept = sorted(p.name for p in slots.store.iterdir() if p.is_dir())
    record = slots.load()
    assert kept == sorted([record.known_good, record.previous])


def test_a_damaged_record_is_set_aside(slots: ImageSlots, tmp_path: Path) -> None:
    slots.store.mkdir(parents=True, exist_ok=True)
    slots.record_path.write_text("{not json")
    plan = slots.plan(lambda: make_image(tmp_path / "a", "1.0"))
    assert plan.image.manifest.version == "1.0"


def test_a_manifest_with_a_bad_data_format_is_corrupt(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    text = (a.directory / "manifest.json").read_text().replace('"data_format": 1', '"data_format": "two"')
    (a.directory / "manifest.json").write_text(text)
    with pytest.raises(image_manifest.ManifestError, match="corrupt manifest"):
        image_manifest.load(a.directory)


def test_fingerprint_changes_with_the_command_line(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", "1.0")
    changed = dataclasses.replace(a.manifest, cmdline="quiet pinnace.marker=1")
    assert fingerprint(a.manifest) != fingerprint(changed)


def test_a_second_rollback_is_refused(slots: ImageSlots, tmp_path: Path) -> None:
    boot(slots, make_image(tmp_path / "a", "1.0"))
    boot(slots, make_image(tmp_path / "b", "2.0"))
    slots.rollback()
    with pytest.raises(SlotError, match="no previous guest image"):
        slots.rollback()
