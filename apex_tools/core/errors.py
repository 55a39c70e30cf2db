"""One error root for every expected failure; the program edge turns them into messages."""

from __future__ import annotations


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


class BundleError(ApexError):
    """A disconnected bundle cannot be written, read or verified."""
