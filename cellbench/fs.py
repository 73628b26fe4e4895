"""Files written like a Unix tool writes them: atomically, with the process umask, under a lock.

Every file cellbench writes goes through one of these doors:

* :func:`atomic_path` -- a context manager yielding a unique temporary name beside the target
  (for writers that want a path: safetensors, ``numpy.save``, PIL, ONNX); on success the file
  gets the mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``) and replaces the
  target in one ``os.replace``; on failure the temporary file is removed.
* :func:`atomic_write` -- bytes or text through :func:`atomic_path`.
* :class:`FolderLock` -- an advisory ``flock`` on ``DIR/.cellbench.lock`` that names its holder
  (pid, host, command, start time) in the error a second process gets.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask; :func:`atomic_path`
applies the umask explicitly, so results, images and checkpoints are readable by whoever may
read the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import CellbenchError

__all__ = ["atomic_path", "atomic_dir", "atomic_write", "file_mode", "dir_mode", "sha256_file", "FolderLock",
           "LockedError"]

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder: ``0o777 & ~umask``."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; on success it replaces ``path`` atomically.

    The parent folder is created. Two processes writing the same target never share a
    temporary name. ``mode`` defaults to :func:`file_mode` (the umask's).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, file_mode() if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces the folder ``path`` in one rename.

    The tree gets the umask's modes (:func:`dir_mode`, :func:`file_mode`; ``mkdtemp`` makes 0700);
    an existing ``path`` is moved aside, the new folder renamed in, then the old one removed, so a
    reader never sees a half-written folder. On failure the temporary folder is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        dmode, fmode = dir_mode(), file_mode()
        os.chmod(tmp, dmode)
        for dirpath, dirnames, filenames in os.walk(tmp):
            for d in dirnames:
                os.chmod(Path(dirpath) / d, dmode)
            for f in filenames:
                os.chmod(Path(dirpath) / f, fmode)
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    raw = data.encode(encoding) if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class LockedError(CellbenchError):
    """Another process holds the lock on a folder."""


class FolderLock:
    """An exclusive advisory lock on a folder (``DIR/.cellbench.lock``), held while in a ``with``.

    A second process (or a second lock in this process) gets :class:`LockedError` naming the
    holder and saying what to do. The lock dies with its process, so a killed run never leaves a
    stale lock behind (the file stays, the ``flock`` does not).
    """

    NAME = ".cellbench.lock"

    def __init__(self, directory: str | os.PathLike, *, what: str = "folder") -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"{self.directory}: {self.what} is in use by another cellbench process ({holder}); "
                "wait for it to finish or use another folder"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:500],
                "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}: {info.get('command', '')}"
