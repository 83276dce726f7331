"""How the heartbeat reaches the shared storage: the :class:`StorageAccess` port.

The writer, the checker and the VM-activity check only read bytes, read a
modification time and replace a file atomically. :class:`LocalStorage` does
that on the local filesystem (a pool's NFS mount); tests and the simulator
use in-memory implementations.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Protocol, final, runtime_checkable

__all__ = ["LocalStorage", "StorageAccess"]

_FILE_MODE = 0o644
"""Heartbeat files are read by the neighbours, maybe as another user."""


@runtime_checkable
class StorageAccess(Protocol):
    """File access on the pools' mount points.

    Contract: every method may block (a hung NFS server) and is called from
    several threads; failures are :class:`OSError` (``FileNotFoundError``
    when the file does not exist), never another exception.
    """

    def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
        """At most ``max_bytes`` bytes from the start of ``path``.

        Raises:
            FileNotFoundError: the file does not exist.
            OSError: it cannot be read.
        """

    def mtime(self, path: str) -> float:
        """The modification time of ``path``, in Unix epoch seconds.

        Raises:
            FileNotFoundError: the file does not exist.
            OSError: it cannot be examined.
        """

    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` so readers see the old or the new content, never a mix.

        Creates the parent directory when it is missing.

        Raises:
            OSError: the file could not be written; its old content is intact.
        """


@final
class LocalStorage:
    """:class:`StorageAccess` on the local filesystem.

    :meth:`write_atomic` writes a temporary file in the target's directory,
    ``fsync``\\ s it, renames it over the target (:func:`os.replace`) and
    ``fsync``\\ s the directory, so the new heartbeat is on the server before
    the call returns. A failed write removes its temporary file.
    """

    def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        with open(path, "rb") as handle:
            return handle.read(max_bytes)

    def mtime(self, path: str) -> float:
        return os.stat(path).st_mtime

    def write_atomic(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), _FILE_MODE)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(directory)

    def __repr__(self) -> str:
        return "LocalStorage()"


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems cannot fsync a directory; the rename is then as
        # durable as they make it.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
