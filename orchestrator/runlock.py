"""One driver per run folder: an exclusive ``fcntl`` lock on ``<folder>/.lock``.

The lock is taken before anything else and held for the driver's life; the kernel releases it
when the process dies (also on SIGKILL), so a crashed driver never leaves a stale lock.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from medcore.errors import RunError

LOCK_NAME = ".lock"


class RunLock:
    """``with RunLock(folder, what="search"):`` -- raises RunError if another process holds it."""

    def __init__(self, folder: str | os.PathLike, what: str = "driver"):
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"{self.path.parent} is in use by another {self.what} (pid {holder}); "
                           f"wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
