"""One writer per store: an advisory ``flock`` on ``<store>/.writer.lock``.

The lock belongs to the writing job's rank 0 (``save-logits``, ``convert-store``); a second job
on the same store is refused with the holder's host, process id and start time. The operating
system releases a ``flock`` when its process ends, however it ends (SIGKILL included), so a killed
writer never leaves the store locked; the file stays behind with the last holder's details and is
simply locked again by the next writer. (NFS clients implement ``flock`` with byte-range locks
the server releases when the client's lease expires.)
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

from .errors import StoreError

LOCK_FILE = ".writer.lock"


class WriterLock:
    """Context manager holding the store's writer lock (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, what: str = "save-logits"):
        self.path = os.path.join(os.fspath(root), LOCK_FILE)
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> WriterLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(
                    f"store {os.path.dirname(self.path)!r} is being written by another job "
                    f"({holder}); wait for it to finish or stop it, then rerun. The lock is "
                    "released when that process ends, even if it is killed") from None
            raise StoreError(f"cannot lock {self.path} ({err.strerror}): the file system does "
                             "not support file locks; write the store on one that does") from None
        info = dict(command=self.what, host=socket.gethostname(), pid=os.getpid(),
                    since=time.strftime("%Y-%m-%d %H:%M:%S"), argv=sys.argv[1:])
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"{info.get('command', 'a writer')} on host {info.get('host')}, pid "
                f"{info.get('pid')}, since {info.get('since')}")
    except (OSError, ValueError):
        return "holder unknown"


__all__ = ["LOCK_FILE", "WriterLock"]
