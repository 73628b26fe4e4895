"""The project's own exception types.

Every error caused by a user's input derives from :class:`CellbenchError`; its message names
the file (or field) at fault and says what to do. The CLI prints these without a traceback.
"""

from __future__ import annotations


class CellbenchError(Exception):
    """Base class for errors caused by input a user can fix."""


class ImageReadError(CellbenchError):
    """An image file is missing, empty, truncated, corrupt, too large or of an unsupported kind."""


class DatasetError(CellbenchError):
    """A dataset folder does not follow one of the documented layouts."""


class ConfigError(CellbenchError):
    """A preset, system file or command-line option is invalid."""


class CheckpointError(CellbenchError):
    """A saved model or checkpoint is missing, corrupt or of the wrong kind."""


class MissingWeightsError(CellbenchError):
    """Pretrained weights are needed but not available locally (nothing is downloaded)."""


class DownloadError(CellbenchError):
    """A download failed (offline, bad checksum, unsafe archive)."""
