"""One root exception for the image builder; subclasses keep the cause and print as one line."""

from __future__ import annotations


class ImageError(Exception):
    """Root of every error the vmimage package raises on purpose."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause

    def __str__(self) -> str:
        if self.cause is None:
            return self.message
        detail = str(self.cause).strip().splitlines()
        return f"{self.message}: {detail[0]}" if detail else self.message


class RecipeError(ImageError):
    """The recipe file is malformed: unknown key, wrong type, missing value (names file and key)."""


class PackageError(ImageError):
    """A Debian package could not be resolved or fetched (names the package or the mirror)."""


class KernelBuildError(ImageError):
    """Configuring or compiling the kernel failed."""


class RootfsError(ImageError):
    """Assembling the root image or the initrd failed."""


class ManifestError(ImageError):
    """The manifest is missing, unreadable or corrupt."""


class PackError(ImageError):
    """A shipped image archive could not be written or read (names the file and what is wrong)."""
