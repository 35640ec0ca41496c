"""User-facing errors.

Every error a user can cause (a bad config, bad data, a bad file on disk, a store in use) is a subclass of
:class:`HierPSError` whose message is one clear line naming the field, file, column or key at fault. The CLI prints
that line and exits with code 2; it never shows a traceback for these.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "ExportError", "HierPSError", "StoreError", "StoreLockedError"]


class HierPSError(Exception):
    """Base class of every user-facing hier_ps error (one line, exit code 2 from the CLI)."""


class ConfigError(HierPSError):
    """A config field is unknown, of the wrong type or out of range."""


class DataError(HierPSError):
    """Input data is missing, of the wrong schema, or holds invalid values."""


class StoreError(HierPSError):
    """A row store on disk cannot be opened or is inconsistent with the config."""


class StoreLockedError(StoreError):
    """A store directory is already opened for writing by another process."""


class ExportError(HierPSError):
    """An export cannot be written or loaded: a missing or corrupt file, a delta on the wrong base, a run still
    writing."""
