"""One writer per folder: an exclusive lock on a file inside it, held while the writer runs.

`photon data prepare` holds its prepared directory's and `photon train` its run folder's,
so two of them never write the same folder. The lock is `flock`'s: the kernel drops it when
its holder exits, however it exits, so a killed writer leaves nothing to clean up. The holder
writes its process id and host into the file; a refused writer names them.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from photon.errors import PhotonError

LOCK_FILE = ".lock"


@contextmanager
def locked(folder: Path, refusal: str, error: type[PhotonError],
           wait: bool = False) -> Iterator[None]:
    """Hold the lock of `folder` (its `.lock` file) for the duration; when another process
    holds it, wait for it with `wait`, else raise `error` with `refusal` and the holder."""
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's words stay
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise error(f"{refusal} ({_holder(path)} holds {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it ("pid 123 on host")."""
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"
