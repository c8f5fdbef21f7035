"""One training per checkpoint folder at a time.

The lock is an OS file lock (flock / msvcrt), so it disappears with the
process that held it: a killed run never leaves a stale lock behind.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import TrainerError

LOCK_NAME = ".training.lock"


class FolderLock:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._handle = None

    def __enter__(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_NAME, "a+")
        try:
            _lock(handle)
        except OSError:
            handle.close()
            raise TrainerError(
                f"Another training is already using the checkpoint folder {self.folder}; "
                "wait for it to finish or choose another checkpoint folder."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            _unlock(self._handle)
            self._handle.close()
            self._handle = None


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
