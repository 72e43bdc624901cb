"""The one error type users see: a single line naming the problem."""


class MedtuneError(Exception):
    """A user-facing error. The CLI prints ``medtune: error: <message>`` and exits 2."""


class DataError(MedtuneError):
    """A dataset is missing, corrupt, mis-shaped or unknown."""


class ConfigError(MedtuneError):
    """A search configuration value is out of range or inconsistent."""
