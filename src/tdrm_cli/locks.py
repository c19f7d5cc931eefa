"""One writer per folder: `FolderLock`, an advisory `flock` on `<folder>/.lock`.

The file holds "pid N on HOST" for whoever finds the folder locked (and for
`runs.writer_alive`, which tells listings whether a `running` run's writer still runs).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from tdrm_cli.errors import UsageError

LOCK = ".lock"


class FolderLock:
    """An exclusive, non-blocking lock on `folder/.lock`; the file says who holds it.

    `flock` locks belong to the open file, so they vanish with a crashed (even `kill -9`ed)
    holder: a `.lock` file that nobody has locked is stale and is simply taken over.
    """

    def __init__(self, folder: Path, fd: int):
        self.folder, self.fd = folder, fd

    @classmethod
    def acquire(cls, folder: str | Path, what: str = "--out") -> FolderLock:
        folder = Path(folder)
        path = folder / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 256).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise UsageError(
                    f"{what} {folder}: in use by {holder} (one process writes a run folder at a time)"
                ) from None
            # The holder may have released and unlinked the file between our open and flock:
            # then we hold a lock on a dead inode; start again on the current file.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = os.read(fd, 256).decode("utf-8", "replace").strip()
        if stale:
            from tdrm_cli.console import log

            log(f"{folder}: taking over the stale lock of {stale} (no longer running)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return cls(folder, fd)

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            (self.folder / LOCK).unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1
