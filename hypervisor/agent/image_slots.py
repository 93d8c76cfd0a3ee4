"""Guest image slots of an instance, so an image update can never strand the user.

An instance keeps verified copies of the images it booted in `<data dir>/image-slots/<fp>/`
(fp: the image's fingerprint, from its manifest's version and artefact digests) and a record,
`slots.json`, of their roles:

  known_good  the image it last booted to a healthy engine
  previous    the known-good image before that one (what `pinnace image rollback` returns to)
  candidate   an image staged by `pinnace image update --from DIR`, not yet judged
  failed      images that failed their health check (or that the user rolled back), with why

The installed image (the package's, or the user's `pinnace image build`) becomes a candidate
when it is neither the known-good image nor the one last taken from there, and has not failed.
A candidate is copied into the store and verified (sha256 against its manifest) before it
boots, so a later package upgrade or rebuild cannot change an image under a slot, and a damaged
candidate is refused before QEMU sees it. The agent judges the boot (hypervisor/agent) and calls
`commit` or `reject`; this module only keeps the record, and never touches the data disk.

Data formats: an image's manifest carries `data_format` (the version of what it writes on the
data disk). Falling back to an image whose data format is older than the failed one's is refused,
since the newer image may have converted the disk on its way up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hypervisor import platform as host_platform
from hypervisor.agent.guest_image import HASH_CACHE_NAME, GuestImage, ImageError, verify
from hypervisor.errors import MachineError
from hypervisor.paths import Paths
from vmimage import manifest as image_manifest

log = logging.getLogger("pinnace.image")

STORE_DIR = "image-slots"
RECORD_FILE = "slots.json"
RECORD_VERSION = 1
FINGERPRINT_LEN = 16


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the filesystem and its rules allow one (the build and dpkg replace files
    by rename, never in place, so a link keeps the verified bytes), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class SlotError(MachineError):
    """An image slot operation that cannot be done (nothing to roll back to, a damaged image…)."""


def fingerprint(manifest: image_manifest.Manifest) -> str:
    """Identifies an image by what it boots: version, arch, command line and artefact digests."""
    parts = {"version": manifest.version, "arch": manifest.arch, "cmdline": manifest.cmdline,
             "artifacts": {k: a.sha256 for k, a in sorted(manifest.artifacts.items())}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:FINGERPRINT_LEN]


def data_format(manifest: image_manifest.Manifest) -> int:
    return manifest.data_format


def describe(manifest: image_manifest.Manifest, fp: str | None = None) -> str:
    """How messages name an image: "0.1.0 (3f2a9c1d0b4e)"."""
    return f"{manifest.version} ({(fp or fingerprint(manifest))[:12]})"


@dataclass
class Failure:
    reason: str
    version: str
    at: float
    console: list[str] = field(default_factory=list)  # the serial console's last lines


@dataclass
class SlotRecord:
    known_good: str = ""
    previous: str = ""
    candidate: str = ""
    installed_seen: str = ""  # the installed image last taken as a candidate
    failed: dict[str, Failure] = field(default_factory=dict)
    # a one-time message for the user ("updated to …", "rolled back because …"); id grows
    notice: str = ""
    notice_id: int = 0

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = RECORD_VERSION
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SlotRecord:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("version") != RECORD_VERSION:
            raise ValueError("not a version 1 slot record")
        failed = {str(k): Failure(**v) for k, v in (raw.get("failed") or {}).items() if isinstance(v, dict)}
        known = {k: raw[k] for k in ("known_good", "previous", "candidate", "installed_seen", "notice", "notice_id")
                 if k in raw}
        return cls(failed=failed, **known)

    def tell(self, text: str) -> None:
        self.notice, self.notice_id = text, self.notice_id + 1


@dataclass(frozen=True)
class BootPlan:
    """What to boot, and what to fall back to if it is a candidate that fails."""

    image: GuestImage
    fingerprint: str
    candidate: bool
    fallback: GuestImage | None = None
    fallback_fingerprint: str = ""
    note: str = ""  # why the installed image is not the one booting, when it is not
    from_installed: bool = False  # the candidate is the installed image (not one staged by hand)

    @property
    def name(self) -> str:
        return describe(self.image.manifest, self.fingerprint)


class ImageSlots:
    """The slot store of one instance; every change is written atomically before it counts."""

    def __init__(self, paths: Paths, hash_cache: Path | None = None,
                 platform: host_platform.Platform | None = None) -> None:
        self.store = paths.data_dir / STORE_DIR
        self.hash_cache = hash_cache if hash_cache is not None else paths.cache_dir / HASH_CACHE_NAME
        self.platform = platform or host_platform.current()

    # --- the record ------------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        return self.store / RECORD_FILE

    def load(self) -> SlotRecord:
        """The record; a missing one is empty, a damaged one is set aside (the slots are only
        a safety net: losing the record costs a rollback target, never data)."""
        try:
            return SlotRecord.from_json(self.record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return SlotRecord()
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring the damaged image slot record %s: %s", self.record_path, exc)
            return SlotRecord()

    def save(self, record: SlotRecord) -> None:
        self.platform.private_dir(self.store, tighten=False)
        self.platform.write_atomic(self.record_path, record.to_json().encode(), private=True)

    def slot_dir(self, fp: str) -> Path:
        return self.store / fp

    def image(self, fp: str) -> GuestImage | None:
        """The stored image `fp`, or None when it is not (or no longer) in the store."""
        if not fp:
            return None
        directory = self.slot_dir(fp)
        try:
            found = image_manifest.load(directory)
        except image_manifest.ManifestError:
            return None
        return GuestImage(directory, found) if fingerprint(found) == fp else None

    # --- staging ---------------------------------------------------------------------------

    def stage(self, source: GuestImage) -> str:
        """Copy a verified image into the store (once) and verify the copy; its fingerprint.
        ImageError when the source does not match its manifest: it is refused before any boot."""
        fp = fingerprint(source.manifest)
        verify(source, self.hash_cache)
        stored = self.image(fp)
        if stored is not None:
            try:
                verify(stored, self.hash_cache)
                return fp
            except ImageError as exc:
                log.warning("stored image %s is damaged, copying it again: %s", fp, exc)
        self.platform.private_dir(self.store, tighten=False)
        tmp = self.store / f".{fp}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for artifact in source.manifest.artifacts.values():
                _link_or_copy(source.directory / artifact.file, tmp / artifact.file)
            image_manifest.save(tmp, source.manifest)
            verify(GuestImage(tmp, source.manifest), self.hash_cache)
            shutil.rmtree(self.slot_dir(fp), ignore_errors=True)
            os.replace(tmp, self.slot_dir(fp))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("image %s staged in %s", describe(source.manifest, fp), self.slot_dir(fp))
        return fp

    # --- choosing --------------------------------------------------------------------------

    def plan(self, locate_installed: Callable[[], GuestImage]) -> BootPlan:
        """What this start boots. Raises ImageError only when there is nothing bootable."""
        record = self.load()
        good = self.image(record.known_good)
        try:
            installed: GuestImage | None = locate_installed()
            installed_error: ImageError | None = None
        except ImageError as exc:
            installed, installed_error = None, exc
        installed_fp = fingerprint(installed.manifest) if installed is not None else ""

        staged = self.image(record.candidate)
        if staged is not None and record.candidate not in record.failed and record.candidate != record.known_good:
            return self._candidate(staged, record.candidate, good, record, "")
        if installed is not None and installed_fp not in (record.known_good, record.installed_seen) \
                and installed_fp not in record.failed:
            try:
                fp = self.stage(installed)
            except (ImageError, OSError) as exc:
                reason = f"the installed guest image {describe(installed.manifest, installed_fp)} was refused: {exc}"
                if good is None:
                    raise ImageError(reason) from exc
                record.failed[installed_fp] = Failure(str(exc), installed.manifest.version, time.time())
                record.tell(f"{reason}; still running {describe(good.manifest, record.known_good)}")
                self.save(record)
                return BootPlan(good, record.known_good, False, note=reason)
            stored = self.image(fp)
            assert stored is not None
            return self._candidate(stored, fp, good, record, "", from_installed=True)
        if good is not None:
            good = self._verified(good, record.known_good, installed)
            note = ""
            if installed_fp and installed_fp in record.failed and installed_fp != record.known_good:
                failure = record.failed[installed_fp]
                note = (f"the installed image {describe(installed.manifest, installed_fp)} is not booted: "  # type: ignore[union-attr]
                        f"{failure.reason}")
            return BootPlan(good, record.known_good, False, note=note)
        if installed is not None:  # no known-good image yet and nothing else: boot what there is
            fp = self.stage(installed)
            stored = self.image(fp)
            assert stored is not None
            return BootPlan(stored, fp, True, from_installed=True)
        assert installed_error is not None
        raise installed_error

    def _verified(self, good: GuestImage, fp: str, installed: GuestImage | None) -> GuestImage:
        """The known-good image after checking its artefacts; a damaged copy is made again from
        the installed image when that is the same image, else refused (ImageError)."""
        try:
            verify(good, self.hash_cache)
            return good
        except ImageError:
            if installed is None or fingerprint(installed.manifest) != fp:
                raise
        self.stage(installed)
        again = self.image(fp)
        if again is None:
            raise ImageError(f"cannot restore the known-good guest image {fp} from {installed.directory}")
        return again

    def _candidate(self, image: GuestImage, fp: str, good: GuestImage | None, record: SlotRecord,
                   note: str, from_installed: bool = False) -> BootPlan:
        if good is not None and data_format(good.manifest) < data_format(image.manifest):
            log.info("candidate %s writes data format %d: no fall back to %s (format %d)",
                     fp, data_format(image.manifest), record.known_good, data_format(good.manifest))
            good = None
        return BootPlan(image, fp, True, good, record.known_good if good is not None else "", note,
                        from_installed)

    # --- judging ---------------------------------------------------------------------------

    def commit(self, plan: BootPlan) -> str:
        """The booted image answered its health check: it is now known good. Returns the notice
        ("" when nothing changed)."""
        record = self.load()
        if record.known_good == plan.fingerprint:
            return ""
        before = self.image(record.known_good)
        if record.known_good:
            record.previous = record.known_good
        record.known_good = plan.fingerprint
        if plan.from_installed:
            record.installed_seen = plan.fingerprint
        if record.candidate == plan.fingerprint:
            record.candidate = ""
        record.failed.pop(plan.fingerprint, None)
        text = ""
        if before is not None:
            text = f"guest image updated to {plan.name} (was {describe(before.manifest, record.previous)})"
            record.tell(text)
        self.save(record)
        self.prune(record)
        return text

    def reject(self, plan: BootPlan, reason: str, console: list[str]) -> str:
        """The candidate failed: remember why (it is not booted again automatically)."""
        record = self.load()
        record.failed[plan.fingerprint] = Failure(reason, plan.image.manifest.version, time.time(), console[-5:])
        if plan.from_installed:
            record.installed_seen = plan.fingerprint
        if record.candidate == plan.fingerprint:
            record.candidate = ""
        text = f"rolled back to {describe(plan.fallback.manifest, plan.fallback_fingerprint)}: " \
               f"image {plan.name} failed: {reason}" if plan.fallback is not None else \
               f"image {plan.name} failed: {reason}"
        record.tell(text)
        self.save(record)
        return text

    def forgive(self, plan: BootPlan) -> None:
        """The fallback failed as well: the failure was not the candidate's (the host, QEMU, the
        disk), so it stays a candidate for the next start."""
        record = self.load()
        record.failed.pop(plan.fingerprint, None)
        if record.installed_seen == plan.fingerprint:
            record.installed_seen = ""
        self.save(record)

    # --- the user's commands ---------------------------------------------------------------

    def rollback_pair(self, record: SlotRecord | None = None) -> tuple[GuestImage, GuestImage]:
        """(current known-good image, the previous one it would roll back to); SlotError with the
        one-line reason when there is none, or when its data format is older than the disk's."""
        record = record or self.load()
        current, target = self.image(record.known_good), self.image(record.previous)
        if target is None or current is None:
            raise SlotError("there is no previous guest image to roll back to "
                            "(one exists after the first update that booted healthy)")
        if data_format(target.manifest) < data_format(current.manifest):
            raise SlotError(f"cannot roll back to {describe(target.manifest, record.previous)}: the data disk "
                            f"has data format {data_format(current.manifest)}, that image reads up to "
                            f"{data_format(target.manifest)}")
        return current, target

    def rollback(self) -> tuple[str, str]:
        """Back to the previous known-good image: the current one is marked as rolled back by the
        user (so the installed copy of it is not booted again). Returns (from, to) descriptions."""
        record = self.load()
        current, target = self.rollback_pair(record)
        was, now = describe(current.manifest, record.known_good), describe(target.manifest, record.previous)
        record.failed[record.known_good] = Failure("rolled back by the user", current.manifest.version, time.time())
        # nothing further back: a second rollback is refused rather than undoing the first
        record.known_good, record.previous, record.candidate = record.previous, "", ""
        record.tell(f"rolled back to {now} (from {was}) by request")
        self.save(record)
        return was, now

    def update_from(self, directory: Path) -> tuple[str, bool]:
        """Stage the image in `directory` as the next start's candidate (verified first);
        (its description, whether it is the known-good image already)."""
        try:
            found = image_manifest.load(directory)
        except image_manifest.ManifestError as exc:
            raise ImageError(f"no usable guest image in {directory}", exc) from exc
        fp = self.stage(GuestImage(directory, found))
        record = self.load()
        record.failed.pop(fp, None)
        if fp == record.known_good:
            self.save(record)
            return describe(found, fp), True
        record.candidate = fp
        self.save(record)
        return describe(found, fp), False

    def prune(self, record: SlotRecord) -> None:
        """Stored images no role refers to are deleted (only ever images no VM boots from)."""
        keep = {record.known_good, record.previous, record.candidate}
        try:
            entries = list(self.store.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                log.info("removed the unused stored image %s", entry.name)

    # --- reporting -------------------------------------------------------------------------

    def summary(self, booted: str = "") -> dict[str, Any]:
        """For `pinnace image status` and the status: each slot's version, fingerprint, role."""
        record = self.load()
        rows = []
        for role in ("known_good", "previous", "candidate"):
            fp = getattr(record, role)
            found = self.image(fp)
            if not fp:
                continue
            rows.append({"role": role.replace("_", " "), "fingerprint": fp,
                         "version": found.manifest.version if found else "",
                         "kernel": found.manifest.kernel_version if found else "",
                         "rootfs_sha256": found.manifest.artifacts["rootfs"].sha256 if found else "",
                         "present": found is not None, "running": fp == booted and bool(booted)})
        failed = [{"fingerprint": fp, **asdict(f)} for fp, f in record.failed.items()]
        return {"slots": rows, "failed": failed, "notice": record.notice, "notice_id": record.notice_id}
