"""One writer per run dir.

``task=train`` (new runs, ``resume=`` and resumed sweep jobs) holds ``<run dir>/.ebmrun.lock``
while it runs: an exclusive ``flock`` on that file, which holds the pid and host of the
holder. A second process that wants the same dir (e.g. ``resume=`` of a run that is still
training) is refused with one line naming the holder, before it writes anything; two
writers would interleave checkpoints and make TensorBoard purge each other's events.

The kernel drops a ``flock`` when its process dies, however it dies, so the lock file a
killed run leaves behind is stale by construction and the next run simply takes it over:
no pid guessing, no race between two processes that both find a stale file.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ebmrun.errors import UserError

LOCK_NAME = ".ebmrun.lock"


def _holder(path: Path) -> str:
    """``pid N on host H since T`` from the lock file (best effort: it may be mid-write)."""
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class RunDirInUse(UserError):
    """Another process holds the run dir: write nothing there (not even error.txt)."""


class RunLock:
    """``with RunLock(run_dir):`` -- hold the run dir's lock, or raise :class:`UserError`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirInUse(f"run dir {self.path.parent} is in use by {_holder(self.path)} "
                                f"(fix: wait for it to end or stop it; one process writes a run "
                                f"dir at a time)") from None
            # The holder we waited for may have unlinked the file just before releasing:
            # then our lock is on a dead inode; lock the file that is there now instead.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held: no one can lock this inode late
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
