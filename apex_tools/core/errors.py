"""One error root for every expected failure; the program edge turns them into messages."""

from __future__ import annotations

import errno
import os


class ApexError(Exception):
    """An expected failure: a message naming the thing and the cause, and a hint on what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class SettingsError(ApexError):
    """Configuration or settings file is missing, unreadable or invalid."""


class StateError(ApexError):
    """The run state or the work-dir lock cannot be used."""


class DownloadError(ApexError):
    """An upstream artifact could not be fetched or verified."""


class RegistryError(ApexError):
    """A registry request failed."""


class BuildError(ApexError):
    """A container image build failed."""


class ImageError(ApexError):
    """A disk image could not be inspected or customized."""


class GerritError(ApexError):
    """A Gerrit change could not be found or fetched."""


class UndercloudError(ApexError):
    """The undercloud cannot be created, reached or configured, or a playbook on it failed."""


class NotBuiltError(ApexError):
    """A target whose implementation has not landed yet."""


class LabError(ApexError):
    """A lab stand-in could not be generated, started or stopped."""


class PatchError(ApexError):
    """A patch is malformed or touches a path outside its target folder."""


# Failures of the machine, not of apex: a full disk, a read-only or foreign folder.
_EXPECTED_OS_ERRORS = {
    errno.ENOSPC: "free space there (or point work_dir / image_dir at a bigger file system)",
    errno.EDQUOT: "free space there or raise the quota",
    errno.EROFS: "point work_dir / image_dir at a writable file system",
    errno.EACCES: "check the folder's owner and permissions (or run as the user owning it)",
    errno.EPERM: "check the folder's owner and permissions (or run as the user owning it)",
    errno.ENOTDIR: "a file stands where a folder is expected: move it away",
    errno.EISDIR: "a folder stands where a file is expected: move it away",
    errno.ELOOP: "a loop of symbolic links: fix the links",
    errno.ENAMETOOLONG: "use a shorter work_dir / image_dir",
}


def expected_os_error(exc: BaseException, where: object) -> ApexError | None:
    """An ``OSError`` a user can fix (disk full, read-only, permissions) as an ApexError naming the
    path (``where`` when the error has none), or None when it is something else (a bug)."""
    if not isinstance(exc, OSError) or exc.errno not in _EXPECTED_OS_ERRORS:
        return None
    path = exc.filename or where
    return StateError(f"{path}: {exc.strerror or os.strerror(exc.errno)}", _EXPECTED_OS_ERRORS[exc.errno])


class BundleError(ApexError):
    """A disconnected bundle cannot be written, read or verified."""
