"""Error types a user can cause. The CLI prints their message as one line, exit code 2.

Each message names the file or field at fault and says how to fix it.
"""


class MRKDError(Exception):
    """Base class of every error caused by input, configuration or environment."""


class ConfigError(MRKDError, ValueError):
    """A config field, experiment spec or CLI option is invalid."""


class DataError(MRKDError):
    """A dataset file or folder is missing, unreadable or not in the expected layout."""


class DownloadError(MRKDError):
    """A download failed, was truncated, or its checksum did not match."""


class StorageError(MRKDError):
    """The artifact store could not be read or written (server down, permissions, corruption)."""


class WeightsError(MRKDError):
    """Teacher weights could not be found or loaded."""


class DeviceError(MRKDError):
    """The requested device is not available (e.g. CUDA asked for on a machine without a GPU)."""
