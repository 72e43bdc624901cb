"""The error types users see: each renders as a single line naming the problem."""
from __future__ import annotations

import re

_FIELD_REF = re.compile(r"`([a-z_][a-z0-9_.]*)`")


class MedtuneError(Exception):
    """A user-facing error. The CLI prints ``medtune: error: <message>`` and exits ``exit_code``
    (2: refused before any work started)."""

    exit_code = 2


class DataError(MedtuneError):
    """A dataset is missing, corrupt, mis-shaped, unknown, or its labels do not fit its task."""


class ResourceError(MedtuneError):
    """A request the cluster cannot satisfy (CPUs, GPUs, memory), or an unreachable cluster."""


class RunError(MedtuneError):
    """A run folder that cannot be used: locked by another driver, holding another search, ..."""


class SearchFailed(RunError):
    """A search ran but produced nothing usable (every candidate failed); exit code 1."""

    exit_code = 1


class ConfigError(MedtuneError, ValueError):
    """A configuration value is out of range or inconsistent.

    ``field`` is the config field's path (``budget``, ``fit.max_epochs``); other fields named in
    the message are written as `` `pop_size` ``. :meth:`render` turns both into the caller's
    vocabulary: CLI flags (``--budget``) or a spec path (``searches[1].budget``).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field

    def render(self, name_of=lambda path: path, prefix: str = "") -> str:
        text = _FIELD_REF.sub(lambda m: name_of(m.group(1)), self.message)
        if self.field is None:
            return text
        return f"{prefix}{name_of(self.field)}: {text}"

    def __str__(self) -> str:
        return self.render()
